"""This module imports a dependency that is not installed."""

import corral_test_dependency_that_does_not_exist  # noqa: F401


async def app(scope, receive, send):
    pass
