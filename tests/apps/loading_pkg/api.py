"""The app one attribute deep: `loading_pkg.api:holder.app`."""


async def app(scope, receive, send):
    pass


class Holder:
    def __init__(self, app):
        self.app = app


holder = Holder(app)
