"""Cross-modal retrieval in numpy: ranks and recall@K from similarity, and regularised CCA in
closed form.

Ranking: query i's correct item is candidate i (the matrices are square and paired). Its rank is
1 + the number of candidates scored higher + half the other candidates scored equal (ties get
the mid-rank, so a constant scorer ranks like a random one rather than perfectly). Queries are
ranked a block at a time, one matrix product per block: memory stays at block x n.
"""

from __future__ import annotations

import numpy as np

from newsdl import defaults as td


def unit(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a, np.float32)
    return a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)


def ranks_from_similarity(sim: np.ndarray) -> np.ndarray:
    """Rank (1 = best) of the diagonal entry in each row of a square similarity matrix."""
    sim = np.asarray(sim)
    diag = np.diagonal(sim)[:, None]
    greater = (sim > diag).sum(axis=1)
    ties = (sim == diag).sum(axis=1) - 1
    return 1.0 + greater + 0.5 * ties


def ranks(queries: np.ndarray, candidates: np.ndarray, block: int = td.RANK_BLOCK) -> np.ndarray:
    """Rank of candidate i for query i under the dot product, in blocks of queries (batched)."""
    queries, candidates = np.asarray(queries, np.float32), np.asarray(candidates, np.float32)
    n = len(queries)
    out = np.empty(n)
    for lo in range(0, n, block):
        hi = min(lo + block, n)
        sim = queries[lo:hi] @ candidates.T
        # The query's own score is read from the same product, so rounding is the same on both sides.
        own = sim[np.arange(hi - lo), np.arange(lo, hi)][:, None]
        greater = np.count_nonzero(sim > own, axis=1)
        at_least = np.count_nonzero(sim >= own, axis=1)
        out[lo:hi] = 1.0 + greater + 0.5 * (at_least - greater - 1)
    return out


def ranks_naive(queries: np.ndarray, candidates: np.ndarray) -> np.ndarray:
    """The same ranks, one query at a time (the benchmark's baseline)."""
    queries, candidates = np.asarray(queries, np.float32), np.asarray(candidates, np.float32)
    out = np.empty(len(queries))
    for i, q in enumerate(queries):
        sim = candidates @ q
        own = sim[i]
        out[i] = 1.0 + np.count_nonzero(sim > own) + 0.5 * (np.count_nonzero(sim == own) - 1)
    return out


def recall_metrics(r: np.ndarray) -> dict:
    """recall_at_K (share of queries whose correct item is in the top K) and the median rank."""
    r = np.asarray(r, float)
    if len(r) == 0:
        raise ValueError("no query to rank")
    out = {f"recall_at_{k}": float(np.mean(r <= k)) for k in td.RECALL_AT}
    out["median_rank"] = float(np.median(r))
    return out


def recall_curve(r: np.ndarray, ks: np.ndarray) -> np.ndarray:
    r = np.sort(np.asarray(r, float))
    return np.searchsorted(r, ks, side="right") / max(len(r), 1)


# ------------------------------------------------------------------ CCA

class CCA:
    """Regularised CCA in closed form: whiten each side with (C + r I)^-1/2, then the SVD of the
    whitened cross-covariance gives the canonical directions and correlations.

    ``reg`` is relative: r = reg x the mean eigenvalue of that side's covariance, so one value
    means the same for 300-d word vectors and 4096-d FC7. The eigendecompositions are computed
    once; ``fit_regs`` returns one projection per regularisation for the price of one SVD each.
    """

    def __init__(self, mean_x, mean_y, wx, wy, corr, reg):
        self.mean_x, self.mean_y = np.asarray(mean_x, np.float32), np.asarray(mean_y, np.float32)
        self.wx, self.wy = np.asarray(wx, np.float32), np.asarray(wy, np.float32)
        self.corr, self.reg = np.asarray(corr, np.float32), float(reg)

    @staticmethod
    def fit_regs(x: np.ndarray, y: np.ndarray, regs, dims: int = td.CCA_DIMS) -> list["CCA"]:
        x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
        if len(x) != len(y) or len(x) < 2:
            raise ValueError("CCA needs at least two paired rows")
        mx, my = x.mean(axis=0), y.mean(axis=0)
        xc, yc = x - mx, y - my
        n = len(x) - 1
        ex, vx = _eig_cov(xc, n)
        ey, vy = _eig_cov(yc, n)
        cxy = xc.T @ yc / n
        out = []
        for reg in regs:
            ix = vx * (1.0 / np.sqrt(np.maximum(ex, 0) + reg * max(ex.mean(), 1e-12)))  # columns scaled
            iy = vy * (1.0 / np.sqrt(np.maximum(ey, 0) + reg * max(ey.mean(), 1e-12)))
            # (C + rI)^-1/2 = V diag(.) V^T; whitened cross-covariance in the eigenbases.
            t = ix.T @ cxy @ iy
            u, s, vt = np.linalg.svd(t, full_matrices=False)
            k = min(dims, len(s))
            out.append(CCA(mx, my, ix @ u[:, :k], iy @ vt[:k].T, np.clip(s[:k], 0, 1), reg))
        return out

    def transform_x(self, x, power: float = td.CCA_POWER) -> np.ndarray:
        return unit(((np.asarray(x, np.float32) - self.mean_x) @ self.wx) * self.corr ** power)

    def transform_y(self, y, power: float = td.CCA_POWER) -> np.ndarray:
        return unit(((np.asarray(y, np.float32) - self.mean_y) @ self.wy) * self.corr ** power)

    def save(self, path) -> None:
        from newsdl.workspace import atomic_path

        with atomic_path(path) as tmp:
            with open(tmp, "wb") as fh:
                np.savez(fh, mean_x=self.mean_x, mean_y=self.mean_y, wx=self.wx, wy=self.wy, corr=self.corr,
                         reg=np.float64(self.reg))

    @classmethod
    def load(cls, path) -> "CCA":
        from newsdl.errors import UserError

        try:
            with np.load(path, allow_pickle=False) as z:
                return cls(z["mean_x"], z["mean_y"], z["wx"], z["wy"], z["corr"], float(z["reg"]))
        except (OSError, KeyError, ValueError) as exc:
            raise UserError(f"{path}: not a CCA projection ({exc}); retrain with `newsdl train illustrate --force`") \
                from None


def _eig_cov(xc: np.ndarray, n: int):
    """Eigenvalues and vectors of the covariance of centred rows; through the Gram matrix when there
    are fewer rows than dimensions (the same nonzero eigenpairs, far cheaper at 4096-d FC7)."""
    rows, dim = xc.shape
    if rows < dim:
        g = xc @ xc.T / n
        e, u = np.linalg.eigh(g)
        keep = e > e.max() * 1e-10
        e, u = e[keep], u[:, keep]
        v = xc.T @ u / np.sqrt(e * n)
        # The null space of the covariance gets eigenvalue 0; only the span of the data matters
        # for projections of data, so it is left out.
        return e, v
    e, v = np.linalg.eigh(xc.T @ xc / n)
    return e, v
