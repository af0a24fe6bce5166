"""The Jinja environment every page renders with: the templates folder and the filters of
app/formatting.py. The pages, the login page and the app's static files find the templates here."""

from importlib.resources import files
from pathlib import Path

from fastapi.templating import Jinja2Templates

from app import formatting
from app.models import TUTORIAL_RECIPE

TEMPLATES_DIR = Path(str(files("templates")))
STATIC_DIR = TEMPLATES_DIR / "static"
# Swagger UI's script and stylesheet, as the fastapi-swagger package ships them (package, folder).
SWAGGER_UI_ASSETS = ("fastapi_swagger", "resources")

templates = Jinja2Templates(directory=TEMPLATES_DIR)
templates.env.filters["number"] = formatting.number
templates.env.filters["age"] = formatting.age
templates.env.filters["short_age"] = formatting.short_age
templates.env.filters["duration"] = formatting.duration
templates.env.filters["param"] = formatting.param_value
templates.env.filters["short_param"] = formatting.short_param
templates.env.filters["metric"] = formatting.metric_value
templates.env.globals["metric_label"] = formatting.metric_label
templates.env.globals["run_time"] = formatting.run_time
# The recipe jobs train when they name none: its pages keep the tutorial's own layout.
templates.env.globals["tutorial_recipe"] = TUTORIAL_RECIPE
