"""GreatCircleLoss: the great-circle distance as a Keras loss, in km by default."""

from __future__ import annotations

import keras

from newsdl.ops.gcd import EARTH_RADIUS_KM, great_circle_distance


@keras.saving.register_keras_serializable(package="newsdl")
class GreatCircleLoss(keras.losses.Loss):
    """Mean great-circle distance between true and predicted (lat, lon).

    Uses the custom op, whose kernels XLA cannot compile. Keras 3 compiles with XLA by
    default on a GPU (jit_compile="auto"); there great_circle_distance sees the XLA
    context and uses the plain-TF formulation instead, which XLA fuses. To run the op's
    own CPU/CUDA kernels, compile the model with jit_compile=False.
    """

    def __init__(self, degrees: bool = True, radius_km: float | None = EARTH_RADIUS_KM,
                 reduction: str = "sum_over_batch_size", name: str = "great_circle", dtype=None):
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        self.degrees = degrees
        self.radius_km = radius_km

    def call(self, y_true, y_pred):
        return great_circle_distance(y_true, y_pred, degrees=self.degrees, radius_km=self.radius_km)

    def get_config(self) -> dict:
        return {**super().get_config(), "degrees": self.degrees, "radius_km": self.radius_km}
