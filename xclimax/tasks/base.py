"""The shape every task has: how it trains (``finetune``) and how it predicts (``predict``)."""

from __future__ import annotations

from typing import Any, ClassVar

__all__ = ["Task"]


class Task:
    """A ClimaX task: forecasting, downscaling or climate projection.

    A task says how input/target pairs are formed and how the model is called (``finetune``,
    through the shared fit loop of :mod:`xclimax.training`), how the model's output becomes a
    labelled Dataset (``predict``), its default recipe and its headline metrics. The public
    functions (:func:`xclimax.finetune`, :func:`xclimax.forecast`, :func:`xclimax.downscale`,
    :func:`xclimax.project`) are thin layers over the task registered under their name in
    :data:`xclimax.tasks.TASKS`; a new task is one module with a subclass and one registry line.
    """

    #: registry key, also recorded as ``model.metadata["task"]`` by ``finetune``
    name: ClassVar[str] = ""
    #: :class:`~xclimax.training.TrainConfig` defaults of this task (the paper's recipe)
    recipe: ClassVar[dict[str, Any]] = {}
    #: headline metrics, as accepted by :func:`xclimax.evaluate`
    metrics: ClassVar[tuple[str, ...]] = ()

    def finetune(self, ds: Any, model: Any, config: Any, **kwargs: Any) -> tuple[Any, Any]:
        """Train a copy of ``model`` for this task; ``(model, history)``."""
        raise NotImplementedError(f"task {self.name!r} cannot be trained yet")

    def predict(self, ds: Any, model: Any, **kwargs: Any) -> Any:
        """Run ``model`` on ``ds``; a labelled, CF-annotated Dataset."""
        raise NotImplementedError(f"task {self.name!r} has no inference yet")

    def __repr__(self) -> str:
        return f"<xclimax task {self.name!r}>"
