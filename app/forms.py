"""The new-job form, generated from the recipe's job model (the tutorial's is JobCreate) so the
bounds, labels, sections and help texts have one source: its fields in their sections, the
presets it offers, and the conversion between form strings and job input; and the job page's
form that edits a job's name, tags and notes.

`trainboard submit` reads the same fields for its --help and splits tags as the forms do."""

from functools import lru_cache
from typing import Any

from pydantic import ValidationError

from app.models import FIELD_GROUPS, Job
from app.recipes import COMMON_FIELDS, TUTORIAL, Recipe

# A preset sets many fields at once, and fields given explicitly win over it; the form sends every
# field, so it offers presets as starting points (the form refilled with a preset's values) rather
# than as a field of its own that the other fields would silently override.
PRESET_FIELD = "preset"
# The section a field without one of its own goes to, and the one that starts folded.
ADVANCED_GROUP = "advanced"


def _bounds(option: dict[str, Any]) -> str:
    low, high = option.get("minimum"), option.get("maximum")
    above, below = option.get("exclusiveMinimum"), option.get("exclusiveMaximum")
    if low is not None and high is not None:
        return f"{low} to {high}"
    parts = []
    if low is not None:
        parts.append(f"at least {low}")
    if above is not None:
        parts.append(f"more than {above}")
    if high is not None:
        parts.append(f"at most {high}")
    if below is not None:
        parts.append(f"less than {below}")
    return ", ".join(parts)


@lru_cache
def form_presets(recipe: Recipe = TUTORIAL) -> dict[str, dict[str, str]]:
    """{preset: the form's values under it}, from the job model itself; empty without presets."""
    spec = recipe.json_schema()["properties"].get(PRESET_FIELD)
    if spec is None:
        return {}
    return {
        name: form_values(recipe.validate({PRESET_FIELD: name}).model_dump(mode="json"), recipe)
        for name in spec.get("enum", [])
    }


def preset_help(recipe: Recipe = TUTORIAL) -> str:
    field = recipe.job_model.model_fields.get(PRESET_FIELD)
    return field.description if field is not None else ""


def _headings(recipe: Recipe) -> dict[str, str]:
    """The form's sections: the tutorial's own, or a lab recipe's fields first under its title,
    then the fields every job has."""
    if recipe is TUTORIAL:
        return FIELD_GROUPS
    return {"recipe": recipe.title, "tutorial": "Job", "wandb": FIELD_GROUPS["wandb"], ADVANCED_GROUP: FIELD_GROUPS[ADVANCED_GROUP]}


@lru_cache
def form_fields(recipe: Recipe = TUTORIAL) -> list[dict[str, Any]]:
    # A field that names no section: the tutorial's go to Advanced, a lab recipe's to its own.
    return schema_fields(recipe.json_schema(), ADVANCED_GROUP if recipe is TUTORIAL else "recipe")


def schema_fields(schema: dict[str, Any], own_group: str = "recipe") -> list[dict[str, Any]]:
    """A job model's JSON schema (GET /recipes gives each recipe's) as form fields: name, label,
    section, help, default, kind and bounds."""
    fields = []
    for name, spec in schema["properties"].items():
        if name == PRESET_FIELD:
            continue
        options = [o for o in spec.get("anyOf", [spec]) if o.get("type") != "null"]
        option = options[0]
        field = {
            "name": name,
            "label": spec.get("title", name),
            "group": spec.get("x-group", ADVANCED_GROUP if name in COMMON_FIELDS else own_group),
            "help": spec.get("description", ""),
            "default": spec.get("default"),
            "optional": len(options) < len(spec.get("anyOf", [spec])) or "default" not in spec,
        }
        kind = option.get("type")
        if "enum" in option:
            field.update(kind="select", options=option["enum"])
        elif kind == "boolean":
            field.update(kind="checkbox")
        elif kind in ("integer", "number"):
            field.update(
                kind="number",
                min=option.get("minimum"),
                max=option.get("maximum"),
                bounds=_bounds(option),
                step="1" if kind == "integer" else "any",
            )
        elif kind == "array":
            field.update(kind="tags")
        else:
            field.update(kind="text", maxlength=option.get("maxLength"))
        fields.append(field)
    return fields


@lru_cache
def form_groups(recipe: Recipe = TUTORIAL) -> list[dict[str, Any]]:
    """The form's sections in order, each with its heading and fields; Advanced starts folded."""
    groups = [
        {
            "name": name,
            "heading": heading,
            "collapsed": name == ADVANCED_GROUP,
            "fields": [field for field in form_fields(recipe) if field["group"] == name],
        }
        for name, heading in _headings(recipe).items()
    ]
    return [group for group in groups if group["fields"]]


def form_values(params: dict[str, Any], recipe: Recipe = TUTORIAL) -> dict[str, str]:
    """Job parameters as the form's strings."""
    values = {PRESET_FIELD: str(params.get(PRESET_FIELD) or "")}
    for field in form_fields(recipe):
        value = params.get(field["name"], field["default"])
        if field["kind"] == "tags":
            values[field["name"]] = ", ".join(value or [])
        elif field["kind"] == "checkbox":
            values[field["name"]] = "on" if value else ""
        else:
            values[field["name"]] = "" if value is None else str(value)
    return values


def default_values(recipe: Recipe = TUTORIAL) -> dict[str, str]:
    return form_values(recipe.validate({}).model_dump(mode="json"), recipe)


def submitted_values(form: dict[str, str], recipe: Recipe = TUTORIAL) -> dict[str, str]:
    """What was typed, field by field, to show again beside its errors."""
    return {name: form.get(name, "") for name in [PRESET_FIELD, *(field["name"] for field in form_fields(recipe))]}


def parse_form(form: dict[str, str], recipe: Recipe = TUTORIAL) -> dict[str, Any]:
    """Form strings to the recipe's job input: empty means default, unchecked boxes are false."""
    params: dict[str, Any] = {}
    if form.get(PRESET_FIELD, "").strip():
        params[PRESET_FIELD] = form[PRESET_FIELD].strip()
    for field in form_fields(recipe):
        raw = form.get(field["name"], "").strip()
        if field["kind"] == "checkbox":
            params[field["name"]] = bool(raw)
        elif field["kind"] == "tags":
            params[field["name"]] = split_tags(raw)
        elif raw:
            params[field["name"]] = raw
    return params


def split_tags(raw: str) -> list[str]:
    """"a, b" as ["a", "b"]: how forms and `trainboard submit` take a list of tags."""
    return [tag.strip() for tag in raw.split(",") if tag.strip()]


def field_errors(exc: ValidationError) -> dict[str, str]:
    """{field: its error's message}, to show beside each field."""
    return {str(error["loc"][0]): error["msg"] for error in exc.errors() if error["loc"]}


# ---------------------------------------------------------------------------------------------
# A job's name, tags and notes, edited on its page (JobUpdate)
# ---------------------------------------------------------------------------------------------


EDIT_FIELDS = ("name", "tags", "notes")


def edit_values(job: Job) -> dict[str, str]:
    return {"name": job.name, "tags": ", ".join(job.params.get("tags") or []), "notes": job.notes or ""}


def parse_edit(form: dict[str, str]) -> dict[str, Any]:
    """The edit form's strings as JobUpdate input; the form always sends all three fields."""
    return {"name": form.get("name", "").strip(), "tags": split_tags(form.get("tags", "")), "notes": form.get("notes", "")}
