"""natfast: NAT (Neural Architecture Transformer) and NAT++, fast on CPU and GPU.

    import natfast
    searcher = natfast.search(natfast.SearchConfig(epochs=2, channels=8, layers=5, out="runs/x"))
    beta, family = natfast.get_named("DARTS")
    alpha = natfast.transform_argmax(searcher.policy, beta)
"""
from . import authors, zoo
from .config import SearchConfig, TrainConfig, TransformConfig
from .derive import load_search, transform_argmax, transform_best_of_k
from .experiment import experiment
from .experiment_config import ExperimentConfig
from .flops import count as cost
from .genotype import Genotype, format_genotype, get_named, load_arch, parse
from .network import Network, network_from_supernet
from .ops.dispatch import use_backend
from .policy import make_policy
from .search import Searcher, search
from .supernet import Supernet

__version__ = "0.1.0"
__all__ = ["authors", "zoo", "SearchConfig", "TrainConfig", "TransformConfig", "search", "Searcher", "load_search",
           "transform_argmax", "transform_best_of_k", "cost", "Genotype", "format_genotype", "get_named", "load_arch",
           "parse", "Network", "network_from_supernet", "Supernet", "make_policy", "use_backend",
           "ExperimentConfig", "experiment"]
