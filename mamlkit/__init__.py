"""mamlkit: the library of a course that teaches MAML and FOMAML by building them.

Finn, Abbeel, Levine (2017), "Model-Agnostic Meta-Learning for Fast Adaptation of Deep Networks".

Modules, one idea each:
    maml         adapt, adapt_batch, meta_loss: the inner loop and the meta-objective on torch.func
    sinusoid     the paper's regression tasks, MLP and pretrained baseline
    evaluation   query loss / accuracy after each inner step, 95% confidence intervals
    trainer      MetaConfig, MetaLearner.meta_step, train() with atomic, resumable checkpoints
    checkpoint   atomic save / load (weights_only=True)
    progress     a progress bar for terminals and JupyterLab
    pretrained   the shipped sinusoid weights (reproduce_sinusoid makes them)
    episodes     EpisodeSampler: seeded, vectorized N-way K-shot meta-batches
    omniglot     find / download / load Omniglot, split by character, rotations
    preprocess   any character image -> uint8 28x28, the format Conv4 reads
    glyphs       a procedural offline stand-in for Omniglot (NOT Omniglot)
    conv4        the paper's Conv4 with batch-statistics BatchNorm
    fewshot      few-shot classification: train, evaluate (95% CI), classify; fewshot_results: the table;
                 fewshot_cli: `python -m mamlkit.fewshot`
    toy2d        two-parameter model families: parameter space as a plane
    widgets      InnerLoopExplorer, OuterLoopExplorer, MetaGradientAnatomy (notebook 03)
    exercises    check_exercise and the solutions/ -> notebooks/ generator
    speed        bf16 autocast, torch.compile with fallback, checkpointed inner loop
    baselines    the usual per-task autograd.grad loop, a slow reference
    bench        `python -m mamlkit.bench`: ms per meta-step, memory, GFLOP/s against peers
"""
from .checkpoint import atomic_save, load_checkpoint, save_checkpoint
from .evaluation import adaptation_curve, mean_ci95
from .maml import adapt, adapt_batch, choose_batching, meta_loss, predict_batch
from .trainer import MetaConfig, MetaLearner, train

__all__ = [
    "adapt", "adapt_batch", "meta_loss", "predict_batch", "choose_batching",
    "adaptation_curve", "mean_ci95",
    "MetaConfig", "MetaLearner", "train",
    "atomic_save", "save_checkpoint", "load_checkpoint",
]
__version__ = "0.1.0"
