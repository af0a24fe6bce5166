"""Recipes: what a job trains. A recipe is a name, a title, a version, the metrics it reports, a
pydantic model of its parameters and a `train(params, run)` function that trainboard calls in
the training process with its run context (worker/context.py).

The parameter model is all the app needs: it generates the form, validates POST /jobs and
sweeps, and writes the CLI's help. So a recipe's module imports no torch; `train` is named as
"module:function" and imported only by the training process. The fields every job has whatever
its recipe (COMMON_FIELDS: name, tags, seed, use_cuda, W&B's, checkpoint_every) are trainboard's,
added to the recipe's model; the tutorial's JobCreate holds them and its own fields already.

Where recipes come from, in this order: the tutorial's (`cifar10-resnet18`), installed packages'
entry points in the group `trainboard.recipes`, and TRAINBOARD_RECIPES (`module:attribute,...`).
Recipes are code the operator installs on a host; nothing sent over HTTP ever runs as code. One
that fails to load is kept as an error for /workers and `GET /recipes`, never a crash.
"""

import importlib
import logging
import os
import re
from dataclasses import dataclass, field, replace
from functools import cached_property, lru_cache
from importlib.metadata import entry_points
from typing import Any, Callable, Literal

from pydantic import BaseModel, ConfigDict, ValidationError
from pydantic.fields import FieldInfo

from app.models import TUTORIAL_RECIPE, JobCreate

log = logging.getLogger("trainboard.recipes")

ENTRY_POINT_GROUP = "trainboard.recipes"
RECIPES_ENV = "TRAINBOARD_RECIPES"
# The job fields that are trainboard's whatever the recipe: it names, seeds, places and tracks
# every job with them, and checkpoints it every checkpoint_every epochs.
COMMON_FIELDS = (
    "name", "tags", "seed", "use_cuda", "wandb_project", "wandb_entity", "wandb_mode", "checkpoint_every",
)
RECIPE_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
METRIC_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,31}$")


class RecipeError(ValueError):
    """A recipe that cannot be used: badly declared, or not importable."""


class RecipeMismatch(ValueError):
    """A job's stored fields that the installed version of its recipe does not take."""


class UnknownRecipe(LookupError):
    def __init__(self, name: str, known: list[str]):
        super().__init__(f"no recipe `{name}`; one of: {', '.join(known)}")
        self.name = name


@dataclass(frozen=True)
class Metric:
    """A metric the recipe reports in run.log_epoch: its key, whether more is better, and the
    name its W&B run logs it under (default: the key)."""

    name: str
    goal: Literal["maximize", "minimize"]
    wandb_name: str | None = None

    @property
    def logged_as(self) -> str:
        return self.wandb_name or self.name


@dataclass(frozen=True)
class Recipe:
    name: str
    title: str
    version: str
    params: type[BaseModel]
    train: str  # "module:function", imported in the training process only
    metrics: tuple[Metric, ...]
    description: str = ""
    # It saves its state with run.checkpoint and reads it back with run.restore, so its jobs
    # resume where they stopped and can be paused.
    checkpoints: bool = False
    # Where it was found: "builtin", "entry point <name>", or "TRAINBOARD_RECIPES <module:attribute>".
    source: str = field(default="builtin", compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "metrics", tuple(self.metrics))
        if not RECIPE_NAME.match(self.name or ""):
            raise RecipeError(f"recipe name {self.name!r}: lower-case letters, digits, '.', '_' or '-', at most 64")
        if not self.version or len(self.version) > 32:
            raise RecipeError(f"recipe {self.name}: version {self.version!r} must be 1 to 32 characters")
        if not (isinstance(self.params, type) and issubclass(self.params, BaseModel)):
            raise RecipeError(f"recipe {self.name}: params must be a pydantic model class")
        if ":" not in self.train:
            raise RecipeError(f"recipe {self.name}: train must be 'module:function', not {self.train!r}")
        if not self.metrics:
            raise RecipeError(f"recipe {self.name}: it must declare the metrics it reports")
        for metric in self.metrics:
            if not METRIC_NAME.match(metric.name) or metric.goal not in ("maximize", "minimize"):
                raise RecipeError(f"recipe {self.name}: metric {metric.name!r} needs a plain name and a goal")
        if self.params is not JobCreate:
            taken = sorted(set(self.params.model_fields) & set(COMMON_FIELDS + ("recipe",)))
            if taken:
                raise RecipeError(f"recipe {self.name}: {', '.join(taken)} are trainboard's job fields; rename them")
        try:
            # Every field has a default: an empty form, POST /jobs {} and a sweep's constants start from them.
            self.job_model.model_validate({})
        except Exception as exc:
            raise RecipeError(f"recipe {self.name}: every parameter needs a default ({str(exc).splitlines()[0]})") from None

    @cached_property
    def job_model(self) -> type[BaseModel]:
        """Its jobs' fields: the recipe's own and trainboard's COMMON_FIELDS, as JobCreate defines
        them, unknown ones refused. The tutorial's model is JobCreate itself."""
        if self.params is JobCreate:
            return JobCreate
        fields = {name: JobCreate.model_fields[name] for name in COMMON_FIELDS}
        # Its runs go to a W&B project named after it unless the job says otherwise.
        fields["wandb_project"] = FieldInfo.merge_field_infos(fields["wandb_project"], default=self.name)
        namespace: dict[str, Any] = {
            "__annotations__": {name: info.annotation for name, info in fields.items()},
            "__module__": self.params.__module__,
            "__doc__": self.params.__doc__,
            "model_config": ConfigDict(extra="forbid", allow_inf_nan=False),
            **fields,
        }
        return type(f"{self.params.__name__}Job", (self.params,), namespace)

    def validate(self, data: dict[str, Any]) -> BaseModel:
        """Its job parameters; pydantic's ValidationError naming each refused field."""
        return self.job_model.model_validate(data)

    def stored_params(self, params: dict[str, Any], where: str = "here") -> BaseModel:
        """A stored job's fields (a retry's, a claim's) as this version takes them; RecipeMismatch
        naming each refused one when the job was validated against another version."""
        try:
            return self.validate(params)
        except ValidationError as exc:
            problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
            raise RecipeMismatch(
                f"its fields do not fit recipe {self.name} version {self.version} as installed {where}: {problems}"
            ) from None

    def metric(self, name: str) -> Metric | None:
        """One of its metrics, by key or by W&B name."""
        return next((m for m in self.metrics if name in (m.name, m.wandb_name)), None)

    def train_function(self) -> Callable[[BaseModel, Any], Any]:
        module, _, attribute = self.train.partition(":")
        return getattr(importlib.import_module(module), attribute)

    def json_schema(self) -> dict[str, Any]:
        return self.job_model.model_json_schema()

    def summary(self) -> dict[str, Any]:
        return {
            "name": self.name, "title": self.title, "version": self.version, "description": self.description,
            "checkpoints": self.checkpoints,
            "metrics": [{"name": m.name, "goal": m.goal, "wandb_name": m.logged_as} for m in self.metrics],
        }


TUTORIAL = Recipe(
    name=TUTORIAL_RECIPE,
    title="ResNet-18 on CIFAR-10",
    version="1",
    params=JobCreate,
    train="worker.train:train",
    metrics=(
        Metric("test_accuracy", "maximize", "Test Accuracy"),
        Metric("test_loss", "minimize", "Test Loss"),
        Metric("train_loss", "minimize", "Train Loss"),
    ),
    description="The W&B tutorial: torchvision's ResNet-18 on CIFAR-10 with SGD, its bugs fixed, and the fast94 preset",
    checkpoints=True,
)


@dataclass(frozen=True)
class Registry:
    """The recipes this process can run, by name, and those that failed to load, by source."""

    recipes: dict[str, Recipe]
    errors: dict[str, str]

    def get(self, name: str) -> Recipe:
        try:
            return self.recipes[name]
        except KeyError:
            raise UnknownRecipe(name, list(self.recipes)) from None

    def versions(self) -> dict[str, str]:
        return {name: recipe.version for name, recipe in self.recipes.items()}


def _found(value: Any, source: str) -> list[Recipe]:
    """The recipes an entry point or attribute gives: a Recipe, a list of them, or a function returning either."""
    if callable(value) and not isinstance(value, Recipe):
        value = value()
    found = [value] if isinstance(value, Recipe) else list(value) if isinstance(value, (list, tuple)) else None
    if not found or not all(isinstance(recipe, Recipe) for recipe in found):
        raise RecipeError(f"{source} is not a trainboard Recipe (nor a list of them)")
    return [replace(recipe, source=source) for recipe in found]


def _load_attribute(reference: str) -> Any:
    module, _, attribute = reference.strip().partition(":")
    if not module or not attribute:
        raise RecipeError(f"{reference!r} is not module:attribute")
    value: Any = importlib.import_module(module)
    for part in attribute.split("."):
        value = getattr(value, part)
    return value


@lru_cache(maxsize=8)
def load(extra: str = "") -> Registry:
    """Every recipe this process can import: the tutorial's, entry points', then `extra`
    (TRAINBOARD_RECIPES's `module:attribute,...`). A later one with a taken name is an error."""
    recipes: dict[str, Recipe] = {TUTORIAL.name: TUTORIAL}
    errors: dict[str, str] = {}
    sources: list[tuple[str, Callable[[], Any]]] = [
        (f"entry point {point.name} ({point.value})", point.load) for point in entry_points(group=ENTRY_POINT_GROUP)
    ]
    sources += [
        (f"{RECIPES_ENV} {reference.strip()}", lambda reference=reference: _load_attribute(reference))
        for reference in extra.split(",") if reference.strip()
    ]
    for source, get in sources:
        try:
            for recipe in _found(get(), source):
                if recipe.name in recipes:
                    raise RecipeError(f"recipe {recipe.name} is defined twice")
                recipes[recipe.name] = recipe
        except Exception as exc:  # a lab's import error of any kind: reported, never a crash
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            errors[source] = f"{type(exc).__name__}: {reason}"[:500]
            log.warning("recipe not loaded from %s: %s", source, errors[source])
    return Registry(recipes, errors)


def registry() -> Registry:
    """This process's recipes, with TRAINBOARD_RECIPES from the environment."""
    return load(os.environ.get(RECIPES_ENV, ""))


def json_schemas(found: Registry) -> dict[str, Any]:
    """Each recipe's job fields as an OpenAPI component (the tutorial's is `JobCreate`), and
    `JobRequest`, any one of them: POST /jobs's body, which its route validates itself."""
    components: dict[str, Any] = {}
    choices = []
    for recipe in found.recipes.values():
        schema = recipe.job_model.model_json_schema(ref_template="#/components/schemas/{model}")
        components.update(schema.pop("$defs", {}))
        chosen = {"const": recipe.name, "title": "Recipe", "description": f"{recipe.title} (version {recipe.version})"}
        if recipe is TUTORIAL:
            chosen["default"] = recipe.name
        else:
            schema["required"] = ["recipe", *schema.get("required", [])]
        schema["properties"] = {"recipe": chosen, **schema["properties"]}
        title = "JobCreate" if recipe is TUTORIAL else f"Job-{recipe.name}"
        components[title] = schema
        choices.append({"$ref": f"#/components/schemas/{title}"})
    components["JobRequest"] = {"anyOf": choices, "description": "`recipe` and that recipe's fields (GET /recipes)"}
    return components
