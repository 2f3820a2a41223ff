"""Typed run configuration (see ``config.schema``).

    from config import load_config
    cfg = load_config("config/finetune.yaml", ["train.epochs=1"])
"""
from .schema import (
    RENAMED,
    ConfigError,
    DataConfig,
    DistillConfig,
    ExportConfig,
    IndexConfig,
    ModelConfig,
    PretrainConfig,
    RunConfig,
    SbertConfig,
    SearchConfig,
    ServeConfig,
    TrainConfig,
    VirtConfig,
    config_to_dict,
    given_keys,
    load_config,
    parse_overrides,
    save_config,
    schema_fields,
)

__all__ = [
    "RENAMED", "ConfigError", "DataConfig", "DistillConfig", "ExportConfig", "IndexConfig",
    "ModelConfig", "PretrainConfig", "RunConfig", "SbertConfig", "SearchConfig", "ServeConfig", "TrainConfig", "VirtConfig",
    "config_to_dict", "given_keys", "load_config", "parse_overrides", "save_config", "schema_fields",
]
