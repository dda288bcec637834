"""A module that names its app `application` (Django's asgi.py and Gunicorn's default)."""


async def application(scope, receive, send):
    pass
