"""WSGI config for the test project, as Django generates it."""

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.apps.wsgi_django.settings")

application = get_wsgi_application()
