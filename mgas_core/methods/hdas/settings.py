"""H-DAS's settings (``search.hdas.*``): the official code's values (``msight-tech/research-hdas``,
``config/searchCell_config.py``, ``config/searchStage_config.py``, ``trainer/searchDistribution_trainer.py``)."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field, model_validator

from mgas_core.settings.strict import MAX_EPOCHS, MAX_LAYERS, PATH_TEXT, Strict, field_error


class HdasSettings(Strict):
    cell_epochs: int | None = Field(None, ge=1, le=MAX_EPOCHS,
                                    description="epochs of the cell-level search (Hc-DAS); None: search.epochs")
    stage_epochs: int | None = Field(None, ge=1, le=MAX_EPOCHS,
                                     description="epochs of the stage-level search (Hs-DAS); None: search.epochs")
    cell_layers: int | None = Field(None, ge=5, le=MAX_LAYERS,
                                    description="cells of the cell-level supernet; None: search.layers (official 8)")
    min_cells: int = Field(4, ge=1, le=MAX_LAYERS, description="fewest cells a stage may have (official: 4)")
    max_cells: int = Field(8, ge=1, le=MAX_LAYERS, description="most cells a stage may have (official: 8)")
    window: int = Field(3, ge=2, le=MAX_LAYERS,
                        description="sliding window: a cell reads only the last `window` states (official: 3)")
    depth_coefficient: float = Field(1.0, ge=0, le=1e6, description="weight of the depth loss (official: 1)")
    length_coefficient: float = Field(0.4, ge=0, le=1e6,
                                      description="weight of the stage-length (complexity) loss (official: 0.4)")
    alpha_lr: float = Field(3e-4, gt=0)
    alpha_betas: tuple[Annotated[float, Field(ge=0, lt=1)], Annotated[float, Field(ge=0, lt=1)]] = (0.5, 0.999)
    alpha_weight_decay: float = Field(1e-3, ge=0)
    alpha_init_std: float = Field(1e-3, ge=0)
    cells_from: str | None = Field(None, min_length=1, max_length=4096, pattern=PATH_TEXT,
                                   description="take the cells from this architecture (darts_v1, darts_v2 or a JSON "
                                               "such as a DARTS search writes) and search only the stage level")

    @model_validator(mode="after")
    def _bounds(self) -> HdasSettings:
        if self.min_cells > self.max_cells:
            raise field_error("min_cells", f"min_cells ({self.min_cells}) is above max_cells ({self.max_cells})",
                              self.min_cells, "HdasSettings")
        return self
