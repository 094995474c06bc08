"""Label-free adaptation from unlabelled RGB-T pairs (``rgbt-pretrain``): ``pccl`` and ``cmss-mim``."""
from .adapters import AdapterFileError, AdapterLoadReport, load_adapters_into, read_adapters, save_adapters
from .cmss import CMSSConfig, CMSSMIMObjective, cmss_scores, complementary_masks, fit_gmm_1d
from .data import BagPairs, DatasetPairs, FolderPairs, PairSourceConfig, PairSourceError, PairTensors, build_pair_source
from .loop import METHODS, PretrainConfig, Pretrainer, load_pretrain_config
from .pccl import PCCLConfig, PCCLObjective, attention_threshold_targets, pccl_loss

__all__ = [
    "AdapterFileError", "AdapterLoadReport", "BagPairs", "CMSSConfig", "CMSSMIMObjective", "DatasetPairs",
    "FolderPairs", "METHODS", "PCCLConfig", "PCCLObjective", "PairSourceConfig", "PairSourceError", "PairTensors",
    "PretrainConfig", "Pretrainer", "attention_threshold_targets", "build_pair_source", "cmss_scores",
    "complementary_masks", "fit_gmm_1d", "load_adapters_into", "load_pretrain_config", "pccl_loss", "read_adapters",
    "save_adapters",
]
