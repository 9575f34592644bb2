"""avcl.models: audio (log-mel, waveform) and video encoders, projection heads, `build_model`."""
from avcl.models.batch_norm import BatchNorm, set_bn_groups
from avcl.models.heads import ProjectionHead, l2_normalize
from avcl.models.model import (
                               AVModel,
                               build_model,
                               count_params,
                               model_summary,
                               param_counts,
                               set_speed_options,
                               validate_model_config,
)

__all__ = ["AVModel", "BatchNorm", "ProjectionHead", "build_model", "count_params", "l2_normalize",
           "model_summary", "param_counts", "set_bn_groups", "set_speed_options", "validate_model_config"]
