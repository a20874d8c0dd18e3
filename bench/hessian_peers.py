"""The peers of `bench/hessian.py` (pyhessian in both of its modes, hessian-eigenthings' power iteration
and Lanczos) wrapped so that every Hessian-vector product is timestamped (`Clock`)."""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Done(Exception):
    """Raised from inside a tool's product loop once nothing more can be learnt from its run."""


class Clock:
    """Timestamps every Hessian-vector product with the tool's current estimate.

    ``tick(estimate, rule, returned)``: ``rule`` says whether the tool's own stopping rule (tol 1e-3) fires
    at this product and ``returned`` what the tool would then return. The run is cut short (`Done`) once
    the rule has fired and the estimate has been within 1e-4 of the reference for three products, or after
    ``budget`` products.
    """

    def __init__(self, device, ref: float, budget: int):
        self.device, self.ref, self.budget = device, ref, budget
        self.t0 = 0.0
        self.log: list[tuple[float, float]] = []
        self.own: dict | None = None

    def start(self):
        sync(self.device)
        self.log = []
        self.own = None
        self.t0 = time.perf_counter()

    def tick(self, estimate: float, rule: bool = False, returned: float | None = None):
        sync(self.device)
        t = time.perf_counter() - self.t0
        self.log.append((t, float(estimate)))
        if rule and self.own is None:
            val = float(estimate if returned is None else returned)
            self.own = {
                "value": val,
                "seconds": t,
                "hvp": len(self.log),
                "rel_error": abs(val - self.ref) / abs(self.ref),
            }
        close = len(self.log) >= 3 and all(abs(v - self.ref) <= 1e-4 * abs(self.ref) for _, v in self.log[-3:])
        if (self.own is not None and close) or len(self.log) >= self.budget:
            raise Done

    def count_to(self, eps: float) -> int | None:
        """Products after which the estimate stays within eps (relative) of the reference (None: never)."""
        ok = None
        for i, (_, v) in enumerate(self.log):
            if abs(v - self.ref) <= eps * abs(self.ref):
                ok = i + 1 if ok is None else ok
            else:
                ok = None
        return ok


def pyhessian_eig(model, X, y, bs, device, clock, max_iter):
    """pyhessian power iteration; own rule: |lambda_i - lambda_{i-1}| / (|lambda_{i-1}| + 1e-6) < 1e-3,
    returning lambda_{i-1} (as its code does)."""
    from pyhessian import hessian

    batches = [(X[i : i + bs], y[i : i + bs]) for i in range(0, len(X), bs)]
    h = hessian(model, torch.nn.CrossEntropyLoss(), dataloader=batches, cuda=device.type == "cuda")
    orig = h.dataloader_hv_product
    prev = [None]

    def logged(v):
        lam, Hv = orig(v)
        p = prev[0]
        rule = p is not None and abs(p - lam) / (abs(p) + 1e-6) < 1e-3
        prev[0] = lam
        clock.tick(lam, rule=rule, returned=p)
        return lam, Hv

    h.dataloader_hv_product = logged
    torch.manual_seed(0)
    clock.start()
    try:
        h.eigenvalues(maxIter=max_iter, tol=1e-12, top_n=1)
    except Done:
        pass
    model.zero_grad(set_to_none=True)


def pyhessian_single_batch_eig(model, X, y, device, clock, max_iter):
    """pyhessian with all data as its one batch (``data=``), the mode in which it keeps its gradient's
    graph across products as modescape does; the clock includes that build. Own rule as above."""
    import sys

    from pyhessian import hessian

    mod = sys.modules["pyhessian.hessian"]
    orig = mod.hessian_vector_product
    prev = [None]

    def logged(gradsH, params, v):
        Hv = orig(gradsH, params, v)
        lam = float(sum((a * b).sum() for a, b in zip(Hv, v, strict=True)))
        p = prev[0]
        rule = p is not None and abs(p - lam) / (abs(p) + 1e-6) < 1e-3
        prev[0] = lam
        clock.tick(lam, rule=rule, returned=p)
        return Hv

    torch.manual_seed(0)
    mod.hessian_vector_product = logged
    clock.start()
    try:
        h = hessian(model, torch.nn.CrossEntropyLoss(), data=(X, y), cuda=device.type == "cuda")
        h.eigenvalues(maxIter=max_iter, tol=1e-12, top_n=1)
    except Done:
        pass
    finally:
        mod.hessian_vector_product = orig
        model.zero_grad(set_to_none=True)


def eigenthings_op(model, X, y, bs):
    import hessian_eigenthings as he

    batches = [(X[i : i + bs], y[i : i + bs]) for i in range(0, len(X), bs)]
    return he.HessianOperator(model, batches, he.supervised_loss(F.cross_entropy), full_dataset=True)


class Logged:
    """An eigenthings operator that timestamps each product; own rule of its power iteration:
    relative change and relative residual both below 1e-3."""

    def __init__(self, op, clock):
        self.op, self.clock, self.count, self.prev = op, clock, 0, None
        self.size, self.device, self.dtype = op.size, op.device, op.dtype

    def matvec(self, v):
        av = self.op.matvec(v)
        self.count += 1
        if self.clock:
            lam = float(v @ av / (v @ v))
            res = float((av - lam * v).norm() / v.norm())
            rule = (
                self.prev is not None
                and abs(lam - self.prev) / max(abs(lam), 1e-12) < 1e-3
                and res / max(abs(lam), 1e-12) < 1e-3
            )
            self.prev = lam
            self.clock.tick(lam, rule=rule)
        return av

    __call__ = matvec


def eigenthings_power(model, X, y, bs, device, clock, max_iter):
    import hessian_eigenthings as he

    op = Logged(eigenthings_op(model, X, y, bs), clock)
    clock.start()
    try:
        he.power_iteration_one(op, max_iter=max_iter, tol=1e-12, seed=0)
    except Done:
        pass


def eigenthings_lanczos(model, X, y, bs, device, steps):
    import hessian_eigenthings as he

    op = Logged(eigenthings_op(model, X, y, bs), None)
    sync(device)
    t0 = time.perf_counter()
    r = he.lanczos(op, k=1, max_iter=steps, which="LA", seed=0)
    sync(device)
    return float(r.eigenvalues[0]), time.perf_counter() - t0, op.count
