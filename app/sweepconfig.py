"""A sweep's config as W&B writes it (https://docs.wandb.ai/guides/sweeps/sweep-config-keys),
checked against the job's fields, and its search space as Optuna's distributions.

`plan(config)` is the one entry: it validates the whole config and answers a `SweepPlan`, or
raises `SweepConfigError` with every problem located at its key (`parameters.lr.min`), as a 422
names a field. Nothing here imports Optuna at module level, so the app validates without it.
"""

import math
import re
import statistics
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError, model_validator

from app import recipes
from app.inputs import REFUSE_CONTROL
from app.models import TUTORIAL_RECIPE, JobName, Notes
from app.recipes import Recipe

MAX_RUN_CAP = 1000
MAX_PARALLEL = 64
MAX_GRID = 10_000
DEFAULT_PARALLEL = 4
# Job fields a sweep may not vary: they name the trial, not its training.
NOT_SWEPT = {"name", "tags"}
DISTRIBUTIONS = (
    "constant", "categorical", "uniform", "int_uniform", "q_uniform", "log_uniform_values", "q_log_uniform_values",
    "normal", "log_normal",
)
Number = int | float
Text = Annotated[str, StringConstraints(max_length=1024), REFUSE_CONTROL]


class SweepConfigError(ValueError):
    """What is wrong with a config: pydantic-shaped errors ({"type", "loc", "msg", "input"})."""

    def __init__(self, errors: list[dict[str, Any]]):
        super().__init__("; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in errors))
        self.errors = errors


def _error(loc: tuple[Any, ...], message: str, value: Any = None) -> dict[str, Any]:
    return {"type": "sweep_config", "loc": loc, "msg": message, "input": value}


# ---- The config's shape ---------------------------------------------------------------------------


class SweepMetric(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    name: str = Field(description="test_accuracy, test_loss or train_loss, or their W&B names (Test Accuracy, Test Loss)")
    goal: Literal["maximize", "minimize"] = Field(default="minimize", description="W&B's default is minimize")


class SweepParameter(BaseModel):
    """One parameter's W&B form: `value`, `values` (with `probabilities`), or a `distribution`
    with its bounds (`min`/`max`, `q`, `mu`/`sigma`)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    value: Any = None
    values: list[Any] | None = Field(default=None, min_length=1, max_length=MAX_GRID)
    probabilities: list[float] | None = None
    distribution: Literal[DISTRIBUTIONS] | None = None  # type: ignore[valid-type]
    min: Number | None = None
    max: Number | None = None
    q: float | None = Field(default=None, gt=0)
    mu: float | None = None
    sigma: float | None = Field(default=None, gt=0)


class SweepEarlyTerminate(BaseModel):
    """W&B's `hyperband` (min_iter, or max_iter with s; eta), or `median`: stop a trial whose
    metric at an epoch is worse than the median of earlier trials' at that epoch, from min_iter on."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    type: Literal["hyperband", "median"]
    min_iter: int | None = Field(default=None, ge=1, le=10_000)
    max_iter: int | None = Field(default=None, ge=1, le=10_000)
    eta: int = Field(default=3, ge=2, le=100)
    s: int | None = Field(default=None, ge=0, le=100)
    strict: bool | None = None  # W&B's; the pruners here are always as strict as their rule

    @model_validator(mode="after")
    def has_a_minimum(self) -> "SweepEarlyTerminate":
        if self.type == "hyperband" and self.min_iter is None and (self.max_iter is None or self.s is None):
            raise ValueError("hyperband needs min_iter, or max_iter and s")
        return self

    @property
    def first_epoch(self) -> int:
        """The first epoch a trial can be stopped at (W&B: min_iter = max_iter / eta^s)."""
        if self.min_iter is not None:
            return self.min_iter
        if self.type == "median":
            return 1
        return max(1, math.floor(self.max_iter / self.eta ** self.s))


class SweepConfig(BaseModel):
    """A W&B sweep config, with trainboard's `seed` and `parallel`. `program`, `command` and
    `description` are kept as given; `project` and `entity` become the trials' W&B project and entity."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    name: JobName | None = Field(default=None, description="The sweep's name, and its trials' W&B group (default: sweep-<id>)")
    description: Notes | None = None
    method: Literal["grid", "random", "bayes"]
    metric: SweepMetric | None = Field(default=None, description="Required for bayes and early_terminate")
    parameters: dict[str, SweepParameter] = Field(min_length=1, max_length=64)
    run_cap: int | None = Field(default=None, ge=1, le=MAX_RUN_CAP, description="Required for random and bayes")
    early_terminate: SweepEarlyTerminate | None = None
    seed: int | None = Field(default=None, ge=0, le=2**32 - 1, description="Seeds the sampler (default: drawn once, then stored)")
    parallel: int = Field(default=DEFAULT_PARALLEL, ge=1, le=MAX_PARALLEL, description="Most trials queued or running at once")
    recipe: str = Field(
        default=TUTORIAL_RECIPE, max_length=64, description="The recipe its trials train; `parameters` are its job fields",
    )
    program: Text | None = None
    command: list[Text] | None = Field(default=None, max_length=64)
    project: Text | None = None
    entity: Text | None = None


# ---- What the config means ------------------------------------------------------------------------


@dataclass(frozen=True)
class Dimension:
    """One swept parameter: what Optuna samples (`kind` and its arguments) and how a sampled value
    becomes the job field's (`decode`). Grid dimensions are their list of values."""

    name: str
    kind: Literal["categorical", "float", "int"]
    choices: tuple[Any, ...] | range = ()
    low: float = 0.0
    high: float = 1.0
    log: bool = False
    decode: Callable[[Any], Any] = field(default=lambda value: value, compare=False)

    def distribution(self):
        from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

        if self.kind == "categorical":
            return CategoricalDistribution(self.choices)
        if self.kind == "int":
            return IntDistribution(int(self.low), int(self.high))
        return FloatDistribution(self.low, self.high, log=self.log)


@dataclass(frozen=True)
class SweepPlan:
    config: SweepConfig
    recipe: Recipe
    metric: str  # the job metric's key
    goal: Literal["maximize", "minimize"]
    fixed: dict[str, Any]  # job fields every trial has (constants, project, entity)
    dimensions: tuple[Dimension, ...]
    run_cap: int  # trials the sweep runs: run_cap, or for grid the grid's size if smaller

    @property
    def grid(self) -> dict[str, list[Any]]:
        return {d.name: list(d.choices) for d in self.dimensions}

    def job_params(self, sampled: dict[str, Any]) -> dict[str, Any]:
        """A trial's job fields from Optuna's sampled values."""
        return {**self.fixed, **{d.name: d.decode(sampled[d.name]) for d in self.dimensions}}


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader, reading numbers as YAML 1.2 does: `1e-4` is a float (YAML 1.1, and
    so PyYAML, would read it as text; W&B configs write learning rates that way)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)?(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789."),
)


def parse_yaml(text: str) -> Any:
    """YAML to plain data, refusing anchors and aliases: an alias bomb would expand to gigabytes."""
    try:
        for event in yaml.parse(text, Loader=_Loader):
            if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None):
                raise SweepConfigError([_error((), "YAML anchors and aliases (& and *) are not accepted")])
        return yaml.load(text, Loader=_Loader)
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        at = f" at line {where.line + 1} column {where.column + 1}" if where else ""
        raise SweepConfigError([_error((), f"the body is not valid YAML{at}: {getattr(exc, 'problem', None) or exc}")])


def to_yaml(config: dict[str, Any]) -> str:
    """A config as YAML for a person to edit, its keys in the order they were given."""
    return yaml.safe_dump(config, sort_keys=False, allow_unicode=True, default_flow_style=False)


def plan(data: Any) -> SweepPlan:
    """Validate a config (parsed JSON or YAML) into what the sweep runs; SweepConfigError if not."""
    try:
        config = SweepConfig.model_validate(data)
    except ValidationError as exc:
        raise SweepConfigError([
            {"type": e["type"], "loc": e["loc"], "msg": e["msg"], "input": e.get("input")} for e in exc.errors()
        ]) from None
    try:
        recipe = recipes.registry().get(config.recipe)
    except recipes.UnknownRecipe as exc:
        raise SweepConfigError([_error(("recipe",), str(exc), config.recipe)]) from None
    errors: list[dict[str, Any]] = []
    metric = _metric(config, recipe, errors)
    fixed, dimensions = _search_space(config, _Fields(recipe.job_model), errors)
    run_cap = config.run_cap
    if config.method == "grid" and not errors:
        size = math.prod(len(d.choices) for d in dimensions) if dimensions else 1
        if size > MAX_GRID:
            errors.append(_error(("parameters",), f"the grid has {size:,} points; at most {MAX_GRID:,}", None))
        run_cap = min(size, run_cap or size)
    elif config.method != "grid" and run_cap is None:
        errors.append(_error(("run_cap",), f"a {config.method} sweep needs run_cap (1 to {MAX_RUN_CAP})"))
    if errors:
        raise SweepConfigError(errors)
    goal = config.metric.goal if config.metric else "maximize"
    return SweepPlan(config, recipe, metric, goal, fixed, tuple(dimensions), run_cap)


def _metric(config: SweepConfig, recipe: Recipe, errors: list[dict[str, Any]]) -> str:
    """The key of the recipe's metric the config names (by key or W&B name)."""
    first = recipe.metrics[0].name
    if config.metric is None:
        if config.method == "bayes" or config.early_terminate:
            errors.append(_error(("metric",), "bayes and early_terminate need a metric: {name, goal}"))
        return first
    metric = recipe.metric(config.metric.name)
    if metric is None:
        names = [name for m in recipe.metrics for name in dict.fromkeys((m.name, m.logged_as))]
        errors.append(_error(
            ("metric", "name"), f"`{config.metric.name}` is not a job metric of {recipe.name}; one of: {', '.join(names)}",
            config.metric.name,
        ))
        return first
    return metric.name


class _Fields:
    """A recipe's job fields as a sweep varies them: their JSON types and bounds, and whether a value is one they take."""

    def __init__(self, model: type[BaseModel]):
        self.model = model
        self.schemas = _field_schemas(model)
        self.names = [name for name in model.model_fields if name not in NOT_SWEPT]

    def kind(self, name: str) -> str:
        """The JSON type of a job field: integer, number, boolean, string (None-able fields by their other type)."""
        schema = self.schemas[name]
        options = schema.get("anyOf", [schema])
        types = [option.get("type") for option in options if option.get("type") not in (None, "null")]
        return "enum" if any("enum" in option for option in options) else (types[0] if types else "any")

    def bounds(self, name: str) -> tuple[float, float]:
        schema = self.schemas[name]
        options = [o for o in schema.get("anyOf", [schema]) if o.get("type") != "null"]
        option = options[0] if options else schema
        low = option.get("minimum", math.nextafter(option.get("exclusiveMinimum", -math.inf), math.inf))
        high = option.get("maximum", math.nextafter(option.get("exclusiveMaximum", math.inf), -math.inf))
        return low, high

    def check(self, name: str, value: Any, loc: tuple[Any, ...], errors: list[dict[str, Any]]) -> bool:
        """Whether the job field takes this value (its type and bounds); an error at `loc` if not."""
        try:
            self.model.model_validate({name: value})
        except ValidationError as exc:
            problems = [e for e in exc.errors() if e["loc"][:1] == (name,)]
            if problems:
                errors.append(_error(loc, f"{problems[0]['msg']} (for the job field `{name}`)", value))
                return False
        return True


@cache
def _field_schemas(model: type[BaseModel]) -> dict[str, dict[str, Any]]:
    return model.model_json_schema()["properties"]


def _search_space(config: SweepConfig, fields: _Fields, errors: list[dict[str, Any]]) -> tuple[dict[str, Any], list[Dimension]]:
    fixed: dict[str, Any] = {}
    for key, job_field in (("project", "wandb_project"), ("entity", "wandb_entity")):
        value = getattr(config, key)
        if value is not None and fields.check(job_field, value, (key,), errors):
            fixed[job_field] = value
    dimensions: list[Dimension] = []
    for name, parameter in config.parameters.items():
        loc = ("parameters", name)
        if name not in fields.names:
            errors.append(_error(
                loc, f"`{name}` is not a job field that a sweep can vary; one of: {', '.join(fields.names)}", name,
            ))
            continue
        found = _dimension(fields, name, parameter, config.method, loc, errors)
        if isinstance(found, Dimension):
            dimensions.append(found)
        elif found is not None:
            fixed[name] = found[0]
    return fixed, dimensions


def _form(parameter: SweepParameter) -> str | None:
    """The parameter's distribution, as W&B infers it when not given."""
    given = parameter.model_fields_set
    if parameter.distribution:
        return parameter.distribution
    if "value" in given:
        return "constant"
    if parameter.values is not None:
        return "categorical"
    if parameter.min is not None and parameter.max is not None:
        return "int_uniform" if isinstance(parameter.min, int) and isinstance(parameter.max, int) else "uniform"
    return None


def _dimension(
    fields: _Fields, name: str, parameter: SweepParameter, method: str, loc: tuple[Any, ...], errors: list[dict[str, Any]],
) -> Dimension | tuple[Any] | None:
    """The parameter as a Dimension, or (value,) for a constant; None after recording errors."""
    form = _form(parameter)
    before = len(errors)
    if form is None:
        errors.append(_error(loc, "give value, values, or min and max (or a distribution with its bounds)"))
        return None
    if form == "constant":
        if "value" not in parameter.model_fields_set:
            errors.append(_error(loc + ("value",), "a constant needs value"))
            return None
        return (parameter.value,) if fields.check(name, parameter.value, loc + ("value",), errors) else None
    if form == "categorical":
        if parameter.values is None:
            errors.append(_error(loc + ("values",), "categorical needs values"))
            return None
        for index, value in enumerate(parameter.values):
            if isinstance(value, (list, dict)):
                errors.append(_error(loc + ("values", index), "values must be numbers, strings, booleans or null", value))
            else:
                fields.check(name, value, loc + ("values", index), errors)
        if len(set(map(repr, parameter.values))) != len(parameter.values):
            errors.append(_error(loc + ("values",), "values repeat", parameter.values))
        if len(errors) > before:
            return None
        return _categorical(fields, name, parameter, method, loc, errors)
    if method == "grid" and form != "int_uniform":
        errors.append(_error(loc, f"grid needs values (or an int_uniform range), not a {form} distribution", form))
        return None
    return _continuous(fields, name, parameter, form, loc, errors)


def _categorical(fields: _Fields, name: str, parameter: SweepParameter, method: str, loc: tuple[Any, ...], errors: list[dict[str, Any]]) -> Dimension | None:
    values = tuple(parameter.values)
    probabilities = parameter.probabilities
    if probabilities is None or method == "grid":
        return Dimension(name, "categorical", choices=values)
    if len(probabilities) != len(values) or any(p < 0 for p in probabilities) or not math.isclose(sum(probabilities), 1, abs_tol=1e-6):
        errors.append(_error(loc + ("probabilities",), "one probability per value, each at least 0, summing to 1", probabilities))
        return None
    # Optuna's categorical sampling is uniform: weighted choices are a uniform number cut at the
    # cumulative probabilities.
    edges = [sum(probabilities[: index + 1]) for index in range(len(values))]

    def pick(u: float) -> Any:
        return next((value for value, edge in zip(values, edges) if u < edge), values[-1])

    return Dimension(name, "float", low=0.0, high=1.0, decode=pick)


def _continuous(fields: _Fields, name: str, parameter: SweepParameter, form: str, loc: tuple[Any, ...], errors: list[dict[str, Any]]) -> Dimension | None:
    kind = fields.kind(name)
    if kind not in ("integer", "number"):
        errors.append(_error(loc + ("distribution",), f"`{name}` is not a number: give it values", form))
        return None
    as_field = (lambda value: int(round(value))) if kind == "integer" else float
    low_bound, high_bound = fields.bounds(name)
    if form in ("normal", "log_normal"):
        if parameter.mu is None or parameter.sigma is None:
            errors.append(_error(loc, f"{form} needs mu and sigma"))
            return None
        mu, sigma = parameter.mu, parameter.sigma
        gauss = statistics.NormalDist(mu, sigma)
        to_value = (lambda u: math.exp(gauss.inv_cdf(u))) if form == "log_normal" else gauss.inv_cdf
        # Unbounded: sampled as a quantile, then kept within the field's bounds.
        return Dimension(
            name, "float", low=1e-6, high=1 - 1e-6,
            decode=lambda u: as_field(min(max(to_value(u), low_bound), high_bound)),
        )
    if parameter.min is None or parameter.max is None:
        errors.append(_error(loc, f"{form} needs min and max"))
        return None
    low, high = parameter.min, parameter.max
    if low >= high:
        errors.append(_error(loc + ("max",), f"max must be above min ({low})", high))
        return None
    for key, value in (("min", low), ("max", high)):
        fields.check(name, as_field(value) if kind == "integer" else value, loc + (key,), errors)
    if form.startswith("log") or form.startswith("q_log"):
        if low <= 0:
            errors.append(_error(loc + ("min",), f"{form} needs min above 0", low))
    if form.startswith("q_") and parameter.q is None:
        errors.append(_error(loc + ("q",), f"{form} needs q"))
    if errors:
        return None
    if form == "int_uniform":
        if kind != "integer" or not (float(low).is_integer() and float(high).is_integer()):
            errors.append(_error(loc, "int_uniform needs an integer field and integer min and max"))
            return None
        # Its grid is the range itself (len() without listing it, so a huge one is refused cheaply).
        return Dimension(name, "int", choices=range(int(low), int(high) + 1), low=int(low), high=int(high))
    quantum = parameter.q
    quantise = (lambda value: round(value / quantum) * quantum) if quantum else (lambda value: value)
    return Dimension(
        name, "float", low=float(low), high=float(high), log=form in ("log_uniform_values", "q_log_uniform_values"),
        decode=lambda value: as_field(min(max(quantise(value), low), high)),
    )


def json_schemas() -> dict[str, Any]:
    """SweepConfig's JSON schema and those it refers to, for the OpenAPI document's components
    (POST /sweeps reads its body itself, to take YAML as well)."""
    schema = SweepConfig.model_json_schema(ref_template="#/components/schemas/{model}")
    return {**schema.pop("$defs", {}), "SweepConfig": schema}
