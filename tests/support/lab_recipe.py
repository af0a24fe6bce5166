"""A lab's recipe as tests load it through TRAINBOARD_RECIPES: no torch here, a train function
that only reports epochs (so it does not checkpoint), and declarations that must be refused."""

from pydantic import BaseModel, Field

from app.recipes import Metric, Recipe


class Params(BaseModel):
    width: int = Field(default=8, ge=1, le=64, description="Hidden units")
    rate: float = Field(default=0.1, gt=0, le=1, description="Step size")
    epochs: int = Field(default=2, ge=1, le=50, description="Epochs")


def train(params: Params, run) -> None:
    for epoch in range(1, params.epochs + 1):
        run.log_epoch({"score": params.rate * epoch * params.width})


recipe = Recipe(
    name="lab-demo", title="A lab's demo", version="0.3", params=Params, train="tests.support.lab_recipe:train",
    metrics=(Metric("score", "maximize", "Score"),), description="Scores rate x epoch x width",
)

not_a_recipe = {"name": "lab-demo"}


def twice() -> list[Recipe]:
    """Two recipes under one name: the second is refused."""
    return [recipe, recipe]
