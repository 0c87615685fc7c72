"""The registries of omniseq's classes: backbones, tasks and data modules by name.

``omniseq list`` prints them, and every class rebuilt from a file (a checkpoint's
hyper-parameters, a saved ``DNAEncoder``) comes from here by registered name or class
path, never from an import of a path read from the file.

``omniseq list`` must start at once, so this module stays torch-free: the mixer and
dataset names are a static copy of what the registries hold once every module is
imported, and tests/recipes/test_startup.py checks that copy against the real registries.
"""

from __future__ import annotations

import importlib
import sys

BACKBONES = {
    "itransformer": "omniseq.backbones.itransformer.ITransformer",
    "convs5": "omniseq.backbones.convs5.ConvS5",
    "convlstm": "omniseq.backbones.convlstm.ConvLSTM",
    "segmentation_net": "omniseq.domains.vision.SegmentationNet",
    "dna": "omniseq.backbones.dna.DNAModel",
    "caduceus_ps": "omniseq.backbones.dna.DNAModel(rc_mode='ps')",
    "dna_cnn": "omniseq.backbones.cnn1d.DNACNN",
    "sashimi": "omniseq.backbones.sashimi.SaShiMi",
    "sashimi_lm": "omniseq.backbones.sashimi.SaShiMiWaveformLM",
    "mask_separator": "omniseq.backbones.separators.MaskSeparator",
    "convtasnet_torchaudio": "omniseq.backbones.separators.TorchaudioConvTasNet",
    # Vision models are timm citizens: timm.create_model(<name>) after `import omniseq`.
    **{
        name: f"timm.create_model('{name}')"
        for name in (
            "omni_deit_tiny_patch16_224", "omni_deit_small_patch16_224",
            "vim_tiny_patch16_224", "vim_small_patch16_224",
            "vig_tiny_patch16_224", "vig_small_patch16_224", "vig_h_tiny",
            "omni_swin_tiny_patch4_window7_224", "swin3d_unetr_tiny",
        )
    },
    "tsmixer": "omniseq.backbones.tsmixer.TSMixer",
}

# omniseq.backbones.mixers.list_mixers() after `import omniseq.backbones`.
MIXERS = ("attention", "fsmn", "gla", "mamba", "mlp", "s4d", "s5", "vig", "window_attention", "windowed")

# omniseq.data.registry.list_datasets() after register_all_datasets(), in that order.
DATASETS = (
    "ETTh1", "ETTh2", "ETTm1", "exchange_rate",
    *(f"wfde5_gb_{v}" for v in ("Tair", "pr", "Qair", "LWdown", "SWdown", "Wind")),
    "isbi2012", "ecoli_k12", "ecoli_k12_gff",
    *(
        f"gue_{task}_{split}"
        for task in ("prom_300_tata", "prom_core_all", "prom_core_notata", "prom_core_tata",
                     "tf0", "tf1", "tf2", "tf3", "tf4")
        for split in ("dev", "test", "train")
    ),
    "fsdd",
    *(f"speech_commands_noise_{n}" for n in ("doing_the_dishes", "exercise_bike", "pink_noise", "white_noise")),
)

TASKS = {
    "forecasting": "omniseq.recipes.forecasting.ForecastingTask",
    "spatiotemporal": "omniseq.recipes.spatiotemporal.SpatiotemporalTask",
    "segmentation": "omniseq.recipes.segmentation.SegmentationTask",
    "separation": "omniseq.recipes.separation.SeparationTask",
    "dna_pretrain": "omniseq.recipes.genomics.DNAPretrainTask",
    "sequence_classification": "omniseq.recipes.genomics.SequenceClassificationTask",
    "genome_annotation": "omniseq.recipes.genome_annotation.GenomeAnnotationTask",
}

DATAMODULES = {
    "forecasting_data": "omniseq.data.forecasting.ForecastingDataModule",
    "gridded_data": "omniseq.data.gridded.GriddedDataModule",
    "segmentation_data": "omniseq.data.segmentation.SegmentationDataModule",
    "separation_data": "omniseq.data.separation.SeparationDataModule",
    "genome_pretrain_data": "omniseq.data.genomics.GenomePretrainDataModule",
    "sequence_classification_data": "omniseq.data.genomics.SequenceClassificationDataModule",
    "genome_annotation_data": "omniseq.data.genome_annotation.GenomeAnnotationDataModule",
}


def registered_classes() -> dict[str, str]:
    """Registered name -> class path of every backbone, task and data module."""
    backbones = {name: path for name, path in BACKBONES.items() if "(" not in path}
    return {**backbones, **TASKS, **DATAMODULES}


def registered_class(name_or_path: str) -> type | None:
    """The registered class of a name (``"dna"``) or class path; None for anything else.

    Only the modules of the tables above are ever imported. A class path outside them is
    accepted only when it names an omniseq module, data module or task class whose module
    is already imported (a class a helper added, which the user's own config imported).
    """
    if not isinstance(name_or_path, str):
        return None
    table = registered_classes()
    path = table.get(name_or_path) or (name_or_path if name_or_path in table.values() else None)
    if path is None:
        return _imported_omniseq_class(name_or_path)
    module, _, name = path.rpartition(".")
    return getattr(importlib.import_module(module), name)


def registered_name(cls: type) -> str | None:
    """The registered name of ``cls`` (None when it is not registered)."""
    path = f"{cls.__module__}.{cls.__qualname__}"
    return next((name for name, found in registered_classes().items() if found == path), None)


def _imported_omniseq_class(path: str) -> type | None:
    module, _, name = path.rpartition(".")
    if not module.startswith("omniseq.") or module not in sys.modules:
        return None
    import lightning as L
    from torch import nn

    found = getattr(sys.modules[module], name, None)
    if not isinstance(found, type) or not found.__module__.startswith("omniseq."):
        return None
    return found if issubclass(found, (nn.Module, L.LightningDataModule)) else None


# Each domain's data module registers its datasets when imported.
DATA_MODULES = (
    "omniseq.data.forecasting",
    "omniseq.data.gridded",
    "omniseq.data.segmentation",
    "omniseq.data.genomics",
    "omniseq.data.separation",
)


def register_all_datasets() -> None:
    for module in DATA_MODULES:
        importlib.import_module(module)


def list_backbones() -> list[str]:
    return [f"{name} ({path})" for name, path in sorted(BACKBONES.items())]
