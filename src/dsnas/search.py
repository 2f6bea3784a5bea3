"""`DSNAS`: architecture logits, single-path sampling, the DSNAS estimator, resource penalty,
early fix and derivation, for any model built from `Choice` modules.

One training step::

    path = search.sample()            # one candidate per unfixed block, drawn from softmax(alpha)
    loss = criterion(model(x), y)
    loss.backward()                   # one backward: weight grads and the mask rewards dL/dZ
    search.compute_arch_grads()       # alpha.grad = (onehot(s) - p) * dL/dZ (+ resource term)
    arch_optimizer.step(); weight_optimizer.step()
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.distributed as dist
from torch import nn

from .choice import Choice, labelled_choices
from .config import CREDITS


def dsnas_alpha_grad(alpha: torch.Tensor, sampled: int, reward: torch.Tensor) -> torch.Tensor:
    """The DSNAS gradient of one block's logits: g = (onehot(s) - softmax(alpha)) * dL/dZ.

    A score-function gradient whose reward is the first-order credit dL/dZ of the sampled op's
    gate. It is exactly the gradient of E_s[L] when L is linear in the gates, and otherwise
    differs from it only by the first-order Taylor credit.
    """
    p = torch.softmax(alpha.detach().float(), dim=0)
    onehot = torch.zeros_like(p)
    onehot[sampled] = 1.0
    return ((onehot - p) * reward.float()).to(alpha.dtype)


STAT_COLUMNS = ("samples", "gate_sum", "gate_sq", "credit_sum", "credit_sq")  # per candidate, per epoch


def resource_alpha_grad(alpha: torch.Tensor, sampled: int, cost: float) -> torch.Tensor:
    """Gradient of p[s] * cost[s] w.r.t. alpha, where ``cost`` is the sampled candidate's cost
    (flows through the softmax only)."""
    p = torch.softmax(alpha.detach().float(), dim=0)
    onehot = torch.zeros_like(p)
    onehot[sampled] = 1.0
    return (p[sampled] * cost * (onehot - p)).to(alpha.dtype)


def _excluded(choices, names: set[str]) -> list[set[int]]:
    """Per block, the indices of its candidates named in ``names``; every name must be some
    block's candidate, and no block may lose all of its candidates."""
    unknown = names - {n for c in choices for n in c.names}
    if unknown:
        raise ValueError(f"never_pick names no candidate of this model: {', '.join(sorted(unknown))}")
    excluded = [{i for i, n in enumerate(c.names) if n in names} for c in choices]
    if any(len(e) == len(c) for e, c in zip(excluded, choices)):
        raise ValueError("never_pick leaves a block with no candidate to pick")
    return excluded


class DSNAS:
    """Searches the `Choice` blocks of ``model`` (in ``model.modules()`` order).

    A block is one decision: `Choice` modules that share a label (a cell stacked several times)
    get one alpha, one sampled candidate that all of them run, and one gate mask, so its reward
    dL/dZ is the sum of theirs; ``choices`` holds the first module of each (see `decisions`).

    Args:
        model: any ``nn.Module`` containing `Choice` modules (each known by its label, see
            `labelled_choices`).
        costs: per-candidate costs for the resource penalty, in the unit of ``budget``: a
            `CostTable` (its ``metric`` entries; the fixed parts' cost is its ``base``) or one
            sequence of numbers per block (the fixed parts cost ``base_cost``). ``None`` disables
            the penalty.
        metric: which `CostTable` metric to use (``mflops``, ``params_m`` or ``latency_ms``).
        base_cost: the cost outside the choices when ``costs`` is a plain list (0: the budget
            limits the blocks' sum, as the authors' code does).
        budget: threshold tau; the penalty applies to steps whose sampled path costs >= tau.
            ``None`` applies it on every step (when ``penalty`` > 0).
        penalty: lambda, alpha-gradient per unit of cost.
        early_fix: h; a block whose top-1 minus top-2 probability reaches h is fixed to its argmax.
        generator: random generator for path sampling (CPU).
        credit: what rewards the sampled op of every block. ``gate`` (the paper's): its gate's
            first-order credit dL/dZ. ``loss``: the step's loss minus a running mean of earlier
            losses, the score-function estimator before the paper's first-order step (unbiased
            for grad E_s[L] whatever L's shape; the mean lowers the variance, not the direction).
        never_pick: candidate names that `derive` and `early_fix` never choose (DARTS's rule for
            ``none``); they are still sampled and trained.
        baseline_decay: the running mean's decay for ``credit="loss"`` (bias-corrected).
    """

    def __init__(self, model: nn.Module, *, costs=None, metric: str = "mflops", base_cost: float = 0.0,
                 budget: float | None = None, penalty: float = 0.0, early_fix: float = 0.3,
                 generator: torch.Generator | None = None, credit: str = "gate", never_pick: Iterable[str] = (),
                 baseline_decay: float = 0.9):
        from .cost import CostTable

        self.model = model
        labelled = labelled_choices(model)
        if not labelled:
            raise ValueError("the model has no Choice modules to search")
        self.labels: list[str] = [label for label, _ in labelled]
        self.choices: list[Choice] = [choice for _, choice in labelled]
        param = next(model.parameters(), None)
        device = param.device if param is not None else torch.device("cpu")
        self.alphas = [nn.Parameter(torch.zeros(len(c), device=device)) for c in self.choices]
        if isinstance(costs, CostTable):
            base_cost, costs = costs.base[metric], costs.entries[metric]
        self.base_cost = float(base_cost)
        # one host list per block, in float32 like the parameters: costs are read without a device sync
        self.costs = None if costs is None else [torch.as_tensor(c, dtype=torch.float32).tolist() for c in costs]
        if self.costs is not None and [len(c) for c in self.costs] != [len(c) for c in self.choices]:
            raise ValueError("costs must have one entry per candidate of every Choice")
        self.budget, self.penalty, self.threshold = budget, float(penalty), float(early_fix)
        self.generator = generator
        self._masks = [torch.ones((), device=device, requires_grad=True) for _ in self.choices]
        self.path: list[int] = [c.active for c in self.choices]
        if credit not in CREDITS:
            raise ValueError(f"credit must be one of {', '.join(CREDITS)}, got {credit!r}")
        self.credit, self.baseline_decay = credit, float(baseline_decay)
        self.excluded = _excluded(self.choices, set(never_pick))
        # one row per block and candidate (block after block), on the device: the columns of STAT_COLUMNS
        # summed since `take_credit_stats`
        self.credit_stats = torch.zeros(sum(len(c) for c in self.choices), len(STAT_COLUMNS), device=device)
        self._offsets = [sum(len(c) for c in self.choices[:i]) for i in range(len(self.choices))]
        self.baseline = torch.zeros(2, device=device)  # (running mean of the loss, bias correction 1 - decay^t)

    # --- sampling -------------------------------------------------------------------------
    def probs(self) -> list[torch.Tensor]:
        """softmax(alpha) of every block, detached, on the CPU (one device-to-host copy for all)."""
        with torch.no_grad():
            flat = torch.cat([a.detach().float() for a in self.alphas]).cpu()
            return [torch.softmax(a, dim=0) for a in flat.split([len(a) for a in self.alphas])]

    def sample(self, gate: bool = True) -> list[int]:
        """Draw one candidate per unfixed block from softmax(alpha), make it active and (with
        ``gate``) arm its gate; fixed blocks run their fixed op ungated. Returns the path.
        ``gate=False`` samples without collecting rewards (warm-up, where alpha is frozen)."""
        probs = self.probs()
        if not all(bool(torch.isfinite(p).all()) for p in probs):
            raise FloatingPointError("the architecture logits are NaN or infinite")
        width = max(len(p) for p in probs)
        table = torch.stack([nn.functional.pad(p, (0, width - len(p))) for p in probs])
        drawn = torch.multinomial(table, 1, generator=self.generator).squeeze(1).tolist()
        return self.arm(drawn, gate)

    def arm(self, path: list[int], gate: bool = True) -> list[int]:
        """Run ``path`` on the unfixed blocks with their gates armed (fresh rewards); fixed
        blocks run their fixed op. Returns the path actually taken."""
        for choice, mask, idx in zip(self.choices, self._masks, path):
            if choice.fixed is None:
                choice.active = choice.index(idx)
                mask.grad = None
                choice.mask = mask if gate else None
            else:
                choice.active, choice.mask = choice.fixed, None
        self.path = [c.active for c in self.choices]
        return self.path

    def set_path(self, path: list[int] | list[str]) -> None:
        """Run ``path`` (candidate indices or names) ungated, e.g. to evaluate one architecture
        on the supernet."""
        if len(path) != len(self.choices):
            raise ValueError(f"expected {len(self.choices)} choices, got {len(path)}")
        for choice, idx in zip(self.choices, path):
            choice.active, choice.mask = choice.index(idx), None

    def path_cost(self, path: list[int] | None = None) -> float:
        if self.costs is None:
            raise ValueError("no cost table was given")
        path = self.path if path is None else path
        return self.base_cost + sum(c[i] for c, i in zip(self.costs, path))

    # --- the estimator --------------------------------------------------------------------
    def compute_arch_grads(self, loss_scale: torch.Tensor | float = 1.0, loss: torch.Tensor | None = None) -> None:
        """Write the DSNAS alpha-gradient (and the resource term) into ``alpha.grad``.

        Call after ``loss.backward()`` and before the architecture optimizer's step; ``loss`` (the
        step's, unscaled) is needed by ``credit="loss"``. Under torch.distributed the gradients are
        averaged over ranks, so every rank keeps the same alpha, and the credit statistics and the
        loss baseline are summed over ranks, so every rank keeps the same too.
        ``loss_scale``: the factor the backward pass scaled the loss by (a gradient scaler's scale,
        as a tensor to avoid a host sync); the rewards carry it, so the resource term is scaled
        alike, and unscaling the alpha-gradients keeps the two in proportion.
        """
        penalize = self.costs is not None and self.penalty > 0 and (
            self.budget is None or self.path_cost() >= self.budget)
        loss_credit = self._loss_credit(loss) if self.credit == "loss" else None
        grads, slots, gates = [], [], []
        for i, (choice, alpha) in enumerate(zip(self.choices, self.alphas)):
            g = torch.zeros_like(alpha)
            if choice.fixed is None and choice.mask is not None and choice.mask.grad is not None:
                s, gate = choice.active, choice.mask.grad
                g = dsnas_alpha_grad(alpha, s, gate if loss_credit is None else loss_credit * loss_scale)
                if penalize:
                    g = g + self.penalty * resource_alpha_grad(alpha, s, self.costs[i][s]) * loss_scale
                slots.append(self._offsets[i] + s)
                gates.append(gate)
            grads.append(g)
        step_stats = self._step_stats(slots, gates, loss_credit, loss_scale)
        grads, step_stats, mean_loss = self._reduce(grads, step_stats, loss)
        for choice, alpha, g in zip(self.choices, self.alphas, grads):
            alpha.grad = None if choice.fixed is not None else g.clone()
        self.credit_stats += step_stats
        if loss_credit is not None:
            self.baseline.mul_(self.baseline_decay).add_(
                torch.stack((mean_loss.float(), torch.ones_like(self.baseline[1]))), alpha=1 - self.baseline_decay)

    def _step_stats(self, slots: list[int], gates: list, loss_credit, loss_scale) -> torch.Tensor:
        """This step's rows of `STAT_COLUMNS` at the sampled candidates' slots (unscaled; zeros for a
        step whose gradients overflowed under fp16)."""
        stats = torch.zeros_like(self.credit_stats)
        if not slots:
            return stats
        gate = torch.stack(gates).float() / loss_scale
        credit = gate if loss_credit is None else loss_credit.expand_as(gate)
        rows = torch.stack((torch.ones_like(gate), gate, gate * gate, credit, credit * credit), dim=1)
        if isinstance(loss_scale, torch.Tensor):
            rows = torch.where(torch.isfinite(rows).all(dim=1, keepdim=True), rows, torch.zeros_like(rows))
        return stats.index_add_(0, torch.tensor(slots, device=stats.device), rows)

    def _loss_credit(self, loss: torch.Tensor | None) -> torch.Tensor:
        """The step's loss minus the bias-corrected running mean of earlier steps' (0 at the first)."""
        if loss is None:
            raise ValueError('credit "loss" needs the step\'s loss: compute_arch_grads(loss=...)')
        mean, weight = self.baseline[0], self.baseline[1]
        return loss.detach().float() - torch.where(weight > 0, mean / weight.clamp_min(1e-12), loss.detach().float())

    def _reduce(self, grads: list, stats: torch.Tensor, loss: torch.Tensor | None) -> tuple[list, torch.Tensor, torch.Tensor]:
        """Average the alpha-gradients and the loss over ranks, and sum the credit statistics, in
        one all-reduce (a no-op in one process)."""
        loss = torch.zeros((), device=self.baseline.device) if loss is None else loss.detach().float().reshape(())
        if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
            return grads, stats, loss
        world = dist.get_world_size()
        flat = torch.cat([*grads, stats.reshape(-1), loss.reshape(1)])
        dist.all_reduce(flat)
        parts = flat.split([*(len(a) for a in self.alphas), stats.numel(), 1])
        return [g / world for g in parts[:-2]], parts[-2].view_as(stats), parts[-1][0] / world

    def take_credit_stats(self) -> list[torch.Tensor]:
        """The credit statistics since the last call (per block, a (candidates, `STAT_COLUMNS`)
        tensor on the CPU), and start new ones."""
        taken = self._per_block(self.credit_stats.detach().cpu())
        self.credit_stats.zero_()
        return taken

    def _per_block(self, flat: torch.Tensor) -> list[torch.Tensor]:
        return [t.clone() for t in flat.split([len(c) for c in self.choices])]

    # --- early fix and derivation ---------------------------------------------------------
    def fixed(self) -> list[int | None]:
        return [c.fixed for c in self.choices]

    def early_fix(self) -> list[int]:
        """Fix every unfixed block whose top-1 minus top-2 probability is >= h to its argmax
        (among the candidates it may pick, see `pickable_probs`).
        With a budget, the new fixes are then checked in block order, and one is undone while no
        completion would fit (the fixed ops plus the cheapest op of every open block).
        Returns the blocks fixed now."""
        newly = []
        for i, (choice, p) in enumerate(zip(self.choices, self.pickable_probs())):
            if choice.fixed is not None or int((p > 0).sum()) < 2:
                continue
            top = torch.topk(p, 2)
            if float(top.values[0] - top.values[1]) >= self.threshold:
                choice.fix(int(top.indices[0]))
                newly.append(i)
        for i in newly:
            if self.cheapest_completion() > self._budget_or_inf():
                self.choices[i].fixed = None
        return [i for i in newly if self.choices[i].fixed is not None]

    def cheapest_completion(self) -> float:
        """The cost of the cheapest architecture that keeps every fixed block's op."""
        if self.costs is None:
            return 0.0
        return self.base_cost + sum(c[f] if f is not None else min(c)
                                    for c, f in zip(self.costs, self.fixed()))

    def _budget_or_inf(self) -> float:
        return float("inf") if self.budget is None or self.costs is None else float(self.budget)

    def fix_all(self, path: list[int]) -> None:
        for choice, idx in zip(self.choices, path):
            choice.fix(idx)

    def pickable_probs(self) -> list[torch.Tensor]:
        """softmax(alpha) of every block renormalised over the candidates that `derive` may pick
        (0 for the ``never_pick`` ones): the conditional distribution given a pickable op."""
        out = []
        for p, excluded in zip(self.probs(), self.excluded):
            if excluded:
                p = p.clone()
                p[list(excluded)] = 0.0
                p = p / p.sum().clamp_min(1e-30)
            out.append(p)
        return out

    def derive(self) -> list[int]:
        """The architecture: argmax of alpha per block among the candidates it may pick (the
        fixed op for fixed blocks)."""
        return [c.fixed if c.fixed is not None else int(torch.argmax(p))
                for c, p in zip(self.choices, self.pickable_probs())]

    def derive_within(self, budget: float | None = None) -> list[int]:
        """`derive`, then if the argmax child costs more than ``budget`` (default: the search's
        budget; none: plain `derive`), swap unfixed blocks to cheaper candidates, each time taking
        the swap that saves the most cost per unit of log-probability given up, until it fits (or
        nothing cheaper is left)."""
        budget = self.budget if budget is None else budget
        path = self.derive()
        if budget is None:
            return path
        if self.costs is None:
            raise ValueError("no cost table was given")
        logp = [torch.log(p.clamp_min(1e-12)) for p in self.probs()]
        while self.path_cost(path) > budget:
            best = None
            for i, (choice, cost) in enumerate(zip(self.choices, self.costs)):
                if choice.fixed is not None:
                    continue
                for k in range(len(cost)):
                    saved = cost[path[i]] - cost[k]
                    if saved <= 0 or k in self.excluded[i]:
                        continue
                    score = saved / (float(logp[i][path[i]] - logp[i][k]) + 1e-6)
                    if best is None or score > best[0]:
                        best = (score, i, k)
            if best is None:
                break
            path[best[1]] = best[2]
        return path

    def entropy(self) -> float:
        """Mean entropy (nats) of the unfixed blocks' distributions (0 when all are fixed)."""
        ents = [-(p * torch.log(p.clamp_min(1e-12))).sum() for c, p in zip(self.choices, self.probs()) if c.fixed is None]
        return float(torch.stack(ents).mean()) if ents else 0.0

    # --- state ----------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """alpha and the fixed candidate of every block, keyed by the block's label (with its
        candidates' names, so that a checkpoint of another space is refused, not misread)."""
        return {"alphas": {label: a.detach().cpu().clone() for label, a in zip(self.labels, self.alphas)},
                "fixed": {label: -1 if f is None else f for label, f in zip(self.labels, self.fixed())},
                "candidates": {label: list(c.names) for label, c in zip(self.labels, self.choices)},
                "credit": {"stats": dict(zip(self.labels, self._per_block(self.credit_stats.detach().cpu()))),
                           "baseline": self.baseline.detach().cpu().clone()}}

    def load_state_dict(self, state: dict) -> None:
        """Load a `state_dict`, matched by label (older ones hold lists, in block order, and no
        credit statistics: those start from zero)."""
        alphas, fixed = state["alphas"], state["fixed"]
        credit = state.get("credit", {"stats": dict(zip(self.labels, self._per_block(torch.zeros_like(self.credit_stats)))),
                                      "baseline": torch.zeros_like(self.baseline)})
        if isinstance(alphas, dict):
            if set(alphas) != set(self.labels) or set(fixed) != set(self.labels):
                other = sorted(set(alphas) ^ set(self.labels)) or sorted(set(fixed) ^ set(self.labels))
                raise ValueError(f"the saved architecture state does not match this model's blocks (e.g. {other[0]!r})")
            if state.get("candidates", {}) not in ({}, {k: list(c.names) for k, c in zip(self.labels, self.choices)}):
                raise ValueError("the saved architecture state names other candidates than this model's")
            alphas, fixed = [alphas[k] for k in self.labels], [fixed[k] for k in self.labels]
        if len(alphas) != len(self.alphas) or len(fixed) != len(self.choices):
            raise ValueError(f"the saved architecture state has {len(alphas)} blocks, this model {len(self.alphas)}")
        with torch.no_grad():
            for alpha, saved in zip(self.alphas, alphas):
                alpha.copy_(saved)
            self.credit_stats.copy_(torch.cat([credit["stats"][label] for label in self.labels]))
            self.baseline.copy_(credit["baseline"])
        for choice, f in zip(self.choices, fixed):
            f = int(f)
            if f >= 0:
                choice.fix(f)
            else:
                choice.fixed = None
