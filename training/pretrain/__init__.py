"""Label-free adaptation from unlabelled RGB-T pairs (``rgbt-pretrain``): ``pccl`` and ``cmss-mim``."""
from training.pretrain.adapters import AdapterFileError, AdapterLoadReport, load_adapters_into, read_adapters, save_adapters
from training.pretrain.cmss import CMSSConfig, CMSSMIMObjective, cmss_scores, complementary_masks, fit_gmm_1d
from training.pretrain.data import BagPairs, DatasetPairs, FolderPairs, PairSourceConfig, PairSourceError, PairTensors, build_pair_source
from training.pretrain.loop import METHODS, PretrainConfig, Pretrainer, load_pretrain_config
from training.pretrain.pccl import PCCLConfig, PCCLObjective, attention_threshold_targets, pccl_loss

__all__ = [
    "AdapterFileError", "AdapterLoadReport", "BagPairs", "CMSSConfig", "CMSSMIMObjective", "DatasetPairs",
    "FolderPairs", "METHODS", "PCCLConfig", "PCCLObjective", "PairSourceConfig", "PairSourceError", "PairTensors",
    "PretrainConfig", "Pretrainer", "attention_threshold_targets", "build_pair_source", "cmss_scores",
    "complementary_masks", "fit_gmm_1d", "load_adapters_into", "load_pretrain_config", "pccl_loss", "read_adapters",
    "save_adapters",
]
