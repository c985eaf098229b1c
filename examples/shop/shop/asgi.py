"""The shop's ASGI application: ``uvicorn shop.asgi:application --lifespan off``."""

import os

from django.contrib.staticfiles.handlers import ASGIStaticFilesHandler
from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "shop.settings")
# The example serves its own static files (the admin's and the status page's
# look): uvicorn serves none. In production, WhiteNoise or the web server does.
application = ASGIStaticFilesHandler(get_asgi_application())
