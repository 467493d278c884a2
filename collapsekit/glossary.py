"""One name per quantity: the vocabulary of every output collapsekit writes.

Every Python field, JSON key, ``metrics.jsonl`` key, TensorBoard tag and plot label uses the
``name`` of a :class:`Quantity` below (a layer-qualified key is ``"{layer}/{name}"``, e.g.
``projector/effective_rank_lambda``, as the Lightning callback's tags). The documentation's metrics
glossary is generated from :data:`QUANTITIES`, so this module is the single definition.

Files written by earlier versions used other spellings; :func:`canonical_key` maps them
(:data:`LEGACY_KEYS`), so old runs and JSON still load.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Quantity", "QUANTITIES", "LAYERS", "LEGACY_KEYS", "canonical_key", "label", "lookup"]


@dataclass(frozen=True)
class Quantity:
    """A measured quantity: its one name, how plots and tables label it, and its definition.

    Attributes:
        name: the key in every output (field, JSON, metrics.jsonl, TensorBoard).
        label: short label for plots and tables (states λ or σ for ranks).
        formula: the definition, in plain text.
        reference: the paper or convention it comes from.
        healthy: what a healthy value looks like (empty when it depends on the setting).
    """

    name: str
    label: str
    formula: str
    reference: str
    healthy: str = ""


QUANTITIES: tuple[Quantity, ...] = (
    Quantity(
        "effective_rank_lambda",
        "effective rank (λ)",
        "exp(−Σ p_k log p_k), p_k = λ_k / Σλ, λ = eigenvalues of the covariance "
        "C = 1/(N−1) Σ (z−z̄)(z−z̄)ᵀ of the (row-L2-normalised, unless stated) embeddings",
        "Roy & Vetterli 2007 on the variance spectrum of Jing et al. 2022",
        "1 for rank one, D for isotropic; the quantity that shows dimensional collapse",
    ),
    Quantity(
        "effective_rank_sigma",
        "effective rank (σ)",
        "exp(−Σ p_k log p_k), p_k = σ_k / Σσ, σ = singular values of the centred matrix Z − 1z̄ᵀ "
        "(σ_k = √((N−1) λ_k))",
        "Roy & Vetterli 2007",
        "1 for rank one, D for isotropic",
    ),
    Quantity(
        "rankme",
        "RankMe (σ, uncentred)",
        "exp(−Σ p_k log p_k), p_k = σ_k / Σσ + ε, σ = singular values of the uncentred matrix Z",
        "Garrido et al. 2023 (RankMe)",
        "1 for rank one, D for isotropic",
    ),
    Quantity(
        "numerical_rank",
        "numerical rank",
        "number of singular values of the centred matrix above tol · σ_max, at most min(D, N−1)",
        "Golub & Van Loan",
    ),
    Quantity(
        "rank_bound",
        "rank bound",
        "min(D, N − 1): the largest rank N centred samples of dimension D can have",
        "linear algebra",
    ),
    Quantity(
        "alpha",
        "α-ReQ",
        "−slope of the least-squares fit of log λ_i against log i over the positive eigenvalues",
        "Agrawal et al. 2022 (α-ReQ)",
        "near 1 for good representations",
    ),
    Quantity("alpha_r2", "α-ReQ R²", "R² of that fit in log space", "Agrawal et al. 2022"),
    Quantity(
        "std_l2",
        "std of L2-normalised",
        "mean over dimensions of the standard deviation of the L2-normalised rows",
        "Chen & He 2021 (SimSiam)",
        "≈ 1/√D healthy, 0 collapsed",
    ),
    Quantity(
        "top1_variance",
        "top-1 variance fraction",
        "λ_1 / Σλ",
        "PCA",
    ),
    Quantity(
        "top10_variance",
        "top-10 variance fraction",
        "Σ_{k≤10} λ_k / Σλ",
        "PCA",
    ),
    Quantity(
        "mean_cosine",
        "mean cosine",
        "mean over pairs i < j of cos(z_i, z_j)",
        "Jing et al. 2022; DirectCLR",
        "near 0 healthy, 1 completely collapsed",
    ),
    Quantity(
        "std_cosine",
        "std of cosine",
        "population standard deviation over pairs i < j of cos(z_i, z_j)",
        "collapsekit",
    ),
    Quantity(
        "loss",
        "loss",
        "loss_global + λ · loss_local (λ = 0.5)",
        "MoCo v2 (+ the local term of Hassanpour et al. 2024)",
    ),
    Quantity(
        "loss_global",
        "global InfoNCE",
        "−log softmax of [q·k⁺ | q·queue] / T at the positive",
        "He et al. 2020 (MoCo); Chen et al. 2020 (MoCo v2)",
        "well below ln(K + 1), the loss of uniform logits",
    ),
    Quantity(
        "loss_local",
        "local InfoNCE",
        "InfoNCE per grid point: positive = the same point in the other view",
        "Hassanpour et al. 2024; DenseCL/PixPro",
    ),
    Quantity("lr", "learning rate", "the optimiser's learning rate at that step", "SGD"),
    Quantity(
        "top1_queue",
        "top-1 vs queue",
        "fraction of queries whose positive key scores above every queue key",
        "MoCo",
        "can look high in a failed run (fresh-key shortcut): read top1_in_batch",
    ),
    Quantity(
        "top1_in_batch",
        "in-batch top-1",
        "fraction of queries whose own key scores above the other keys of the batch",
        "collapsekit",
        "well above chance 1/B",
    ),
    Quantity(
        "loss_chance",
        "ln(K+1)",
        "ln(K + 1): loss_global of uniform logits over the positive and K queue keys",
        "MoCo",
    ),
    Quantity(
        "top1_in_batch_chance",
        "chance 1/B",
        "1/B: top1_in_batch of a model that ranks keys at random (B: per-rank batch)",
        "collapsekit",
    ),
    Quantity(
        "health",
        "health",
        "healthy / not learning / collapsed from loss_global vs ln(K+1), top1_in_batch vs 1/B "
        "and the projector's mean_cosine and effective_rank_lambda "
        "(collapsekit.diagnostics.health)",
        "collapsekit",
        "healthy",
    ),
    Quantity("images_per_s", "images/s", "training images per second of wall time", "throughput"),
    Quantity(
        "dice",
        "Dice",
        "2|P∩G| / (|P| + |G|) per organ in 3D (background excluded; n/a when absent)",
        "MONAI DiceMetric",
    ),
    Quantity("mean_dice", "mean Dice", "mean of the per-organ Dice over present organs", "BTCV"),
)
"""Every quantity collapsekit reports, in glossary order."""

LAYERS: tuple[str, ...] = ("backbone", "projector", "dense", "zca")
"""Layer qualifiers of ``"{layer}/{name}"`` keys: the pooled backbone output, the projector output,
the per-location (dense) backbone features and the output of a ZCA layer."""

LEGACY_KEYS: dict[str, str] = {
    "effective_rank": "effective_rank_sigma",
    "effective_rank_centered": "effective_rank_sigma",
    "effective_rank_eigenvalues": "effective_rank_lambda",
    "effective_rank_uncentered": "rankme",
    "cosine_mean": "mean_cosine",
    "erank": "effective_rank_sigma",
    "alpha_req": "alpha",
    "alpha_req_r2": "alpha_r2",
    "std_of_l2_normalized": "std_l2",
    "top1_variance_fraction": "top1_variance",
    "top10_variance_fraction": "top10_variance",
    "top1": "top1_queue",
    "batch_top1": "top1_in_batch",
    "batch_top1_chance": "top1_in_batch_chance",
}
"""Keys written by earlier versions and the name each one now has."""

_LEGACY_PREFIXES = {"proj_": "projector/", "dense_": "dense/"}
_BY_NAME = {q.name: q for q in QUANTITIES}


def canonical_key(key: str) -> str:
    """The current spelling of a (possibly legacy, possibly layer-qualified) key.

    ``"proj_effective_rank_eigenvalues"`` → ``"projector/effective_rank_lambda"``;
    ``"effective_rank"`` → ``"effective_rank_sigma"``; unknown keys are returned unchanged.
    """
    for old, new in _LEGACY_PREFIXES.items():
        if key.startswith(old):
            return new + canonical_key(key[len(old) :])
    layer, sep, name = key.rpartition("/")
    return f"{layer}{sep}{LEGACY_KEYS.get(name, name)}"


def lookup(name: str) -> Quantity:
    """The :class:`Quantity` of a (possibly layer-qualified or legacy) key.

    Raises:
        KeyError: no such quantity.
    """
    return _BY_NAME[canonical_key(name).rpartition("/")[2]]


def label(name: str) -> str:
    """Plot/table label of a key: ``"projector/effective_rank_lambda"`` → ``"projector
    effective rank (λ)"``; a key that is not in the glossary is returned unchanged."""
    layer, _, base = canonical_key(name).rpartition("/")
    q = _BY_NAME.get(base)
    text = q.label if q is not None else base
    return f"{layer} {text}" if layer else text
