"""A module with neither `app` nor `application`."""


async def api(scope, receive, send):
    pass
