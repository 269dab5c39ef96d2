"""mamlkit: the library of a course that teaches MAML and FOMAML by building them.

Finn, Abbeel, Levine (2017), "Model-Agnostic Meta-Learning for Fast Adaptation of Deep Networks".

The core, at the top of the package (read maml.py first):
    maml         inner_step, adapt, meta_loss (+ adapt_batch, task_losses): the algorithm on torch.func
    trainer      MetaConfig, MetaLearner.meta_step, train(): the outer loop, resumable
    evaluation   query loss / accuracy after each inner step, 95% confidence intervals
    checks       input checks that name the argument; batched: the task-batched forward pass;
    checkpoint   atomic save / load; progress: tqdm / timed log lines; speed: bf16, compile, checkpointing;
    paths        where shipped weights and results live
    algorithms/  ANIL, MAML++, Reptile, ProtoNets, ProtoMAML on the same inner step (MetaConfig.algorithm)

Grouped by role:
    data/         omniglot, preprocess, characters, glyphs (NOT Omniglot), episodes, augment
    models/       conv4: the paper's few-shot classifier
    experiments/  sinusoid (+ reproduce_sinusoid, pretrained), fewshot (+ fewshot_cli, fewshot_results), lake,
                  omniglot_study (+ curves, gpu_session), compare
    widgets/      InnerLoopExplorer, OuterLoopExplorer, MetaGradientAnatomy, toy2d (notebook 03)
    bench/        `python -m mamlkit.bench`: speed and memory against peers; baselines: slow references
    course/       exercises: check_exercise and the solutions/ -> notebooks/ generator
"""
from .checkpoint import atomic_save, load_checkpoint, save_checkpoint
from .evaluation import adaptation_curve, mean_ci95
from .maml import adapt, adapt_batch, choose_batching, inner_step, meta_loss, predict_batch, task_losses
from .trainer import MetaConfig, MetaLearner, train

__all__ = [
    "inner_step", "adapt", "adapt_batch", "meta_loss", "task_losses", "predict_batch", "choose_batching",
    "adaptation_curve", "mean_ci95",
    "MetaConfig", "MetaLearner", "train",
    "atomic_save", "save_checkpoint", "load_checkpoint",
]
__version__ = "0.2.0"
