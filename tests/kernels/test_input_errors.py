"""Bad input raises ValueError/TypeError/IndexError naming the argument, what was expected and what came."""

from __future__ import annotations

import math

import pytest
import torch

from tokrl_kernels import linear_logprob, linear_pg_loss

N, D, V, K = 6, 8, 11, 4


def _args(**change):
    torch.manual_seed(0)
    args = {
        "hidden": torch.randn(N, D),
        "weight": torch.randn(V, D),
        "targets": torch.randint(0, V, (K,)),
        "advantages": torch.randn(K),
        "index": torch.tensor([0, 2, 2, 5]),
    }
    args.update(change)
    return args


def _call(impl="torch", **change):
    a = _args(**{k: v for k, v in change.items() if k in ("hidden", "weight", "targets", "advantages", "index")})
    kw = {k: v for k, v in change.items() if k not in a}
    return linear_pg_loss(a["hidden"], a["weight"], a["targets"], a["advantages"], a["index"], impl=impl, **kw)


# (id, changed arguments, exception type, fragments the message must hold)
CASES = [
    ("hidden-rank", {"hidden": torch.randn(2, N, D)}, ValueError, ["hidden", "2-D", "(2, 6, 8)"]),
    ("weight-rank", {"weight": torch.randn(V)}, ValueError, ["weight", "2-D", "(11,)"]),
    ("dtype-mismatch", {"weight": torch.randn(V, D, dtype=torch.float64)}, TypeError, ["weight", "float64"]),
    ("int-hidden", {"hidden": torch.ones(N, D, dtype=torch.long)}, TypeError, ["hidden", "int64"]),
    ("d-mismatch", {"weight": torch.randn(V, D + 1)}, ValueError, ["weight", "D=8", "9"]),
    ("index-out-of-range", {"index": torch.tensor([0, 1, 2, 6])}, IndexError, ["index", "[0, 6)", "6"]),
    ("index-negative", {"index": torch.tensor([0, -1, 2, 3])}, IndexError, ["index", "-1"]),
    ("index-float", {"index": torch.tensor([0.0, 1.0, 2.0, 3.0])}, TypeError, ["index", "integer", "float32"]),
    ("target-out-of-range", {"targets": torch.tensor([0, 1, 11, 2])}, IndexError, ["targets", "[0, 11)", "11"]),
    ("targets-length", {"targets": torch.tensor([0, 1, 2])}, ValueError, ["targets", "4 entries", "got 3"]),
    ("advantages-length", {"advantages": torch.randn(5)}, ValueError, ["advantages", "(4,)", "(5,)"]),
    ("old-logp-length", {"old_logp": torch.randn(3)}, ValueError, ["old_logp", "(4,)", "(3,)"]),
    ("weights-length", {"weights": torch.randn(2)}, ValueError, ["weights", "(4,)", "(2,)"]),
    ("ref-missing", {"beta": 0.1}, ValueError, ["ref_logp", "beta > 0", "None"]),
    ("temperature-zero", {"temperature": 0.0}, ValueError, ["temperature", "> 0", "0.0"]),
    ("temperature-negative", {"temperature": -1.0}, ValueError, ["temperature", "-1.0"]),
    ("reduction", {"reduction": "avg"}, ValueError, ["reduction", "'mean'", "'avg'"]),
    ("impl", {"impl": "cuda"}, ValueError, ["impl", "'triton'", "'cuda'"]),
    ("eps-low", {"eps_low": 1.5}, ValueError, ["eps_low", "1.5"]),
    ("hidden-not-tensor", {"hidden": [[0.0] * D] * N}, TypeError, ["hidden", "torch.Tensor", "list"]),
    # Every scalar option is checked the same way: a number (not a bool, string or tensor), then its range.
    ("beta-string", {"beta": "0.1"}, TypeError, ["beta", "str", "'0.1'"]),
    ("eps-high-string", {"eps_high": "0.2"}, TypeError, ["eps_high", "str"]),
    ("eps-low-none", {"eps_low": None}, TypeError, ["eps_low", "NoneType"]),
    ("beta-tensor", {"beta": torch.tensor(0.1)}, TypeError, ["beta", "Tensor"]),
    ("beta-negative", {"beta": -0.1}, ValueError, ["beta", ">= 0", "-0.1"]),
    ("temperature-string", {"temperature": "1.0"}, TypeError, ["temperature", "str"]),
    ("temperature-bool", {"temperature": True}, TypeError, ["temperature", "bool"]),
    ("reduction-none", {"reduction": None}, ValueError, ["reduction", "'sum'", "None"]),
    ("softcap-zero", {"softcap": 0.0}, ValueError, ["softcap", "None or a finite float > 0", "0.0"]),
    ("softcap-negative", {"softcap": -30.0}, ValueError, ["softcap", "-30.0"]),
    ("softcap-inf", {"softcap": math.inf}, ValueError, ["softcap", "inf"]),
    ("softcap-string", {"softcap": "30"}, TypeError, ["softcap", "str", "'30'"]),
    ("softcap-bool", {"softcap": True}, TypeError, ["softcap", "bool"]),
    ("logit-scale-zero", {"logit_scale": 0.0}, ValueError, ["logit_scale", "> 0", "0.0"]),
    ("logit-scale-nan", {"logit_scale": math.nan}, ValueError, ["logit_scale", "nan"]),
    ("logit-scale-tensor", {"logit_scale": torch.tensor(0.5)}, TypeError, ["logit_scale", "Tensor"]),
]


@pytest.mark.parametrize("impl", ["torch", "triton"])
@pytest.mark.parametrize("change,exc,fragments", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_names_argument(change, exc, fragments, impl):
    if impl == "triton":
        pytest.importorskip("triton")
    change = {"impl": impl, **change}  # the "impl" case keeps its own bad impl
    with pytest.raises(exc) as info:
        _call(**change)
    message = str(info.value)
    assert "\n" not in message, f"not a one-line error: {message!r}"
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} missing from: {message}"


def test_logprob_checks_too():
    a = _args()
    with pytest.raises(IndexError, match="targets"):
        linear_logprob(a["hidden"], a["weight"], torch.tensor([0, 1, 2, 99]), a["index"], impl="torch")


@pytest.mark.parametrize(
    "option,value,exc", [("softcap", -1.0, ValueError), ("logit_scale", "2", TypeError), ("temperature", 0, ValueError)]
)
def test_logprob_checks_the_logit_map(option, value, exc):
    a = _args()
    with pytest.raises(exc, match=f"^{option}: "):
        linear_logprob(a["hidden"], a["weight"], a["targets"], a["index"], impl="torch", **{option: value})


def test_env_override_is_validated(monkeypatch):
    monkeypatch.setenv("TOKRL_KERNEL_IMPL", "fast")
    with pytest.raises(ValueError, match="TOKRL_KERNEL_IMPL.*'fast'"):
        _call(impl="auto")


def test_env_override_selects_torch(monkeypatch):
    from tokrl_kernels import resolve_impl

    monkeypatch.setenv("TOKRL_KERNEL_IMPL", "torch")
    assert resolve_impl("auto", torch.device("cpu")) == "torch"


def test_empty_selection_gives_zero_loss_and_gradients():
    hidden = torch.randn(N, D, requires_grad=True)
    weight = torch.randn(V, D, requires_grad=True)
    empty = torch.empty(0, dtype=torch.long)
    for reduction in ("sum", "mean"):
        out = linear_pg_loss(hidden, weight, empty, torch.empty(0), empty, reduction=reduction, impl="torch")
        assert out.loss.item() == 0.0 and out.logp.shape == (0,) and out.clipped.shape == (0,)
        hidden.grad = weight.grad = None
        out.loss.backward()
        assert hidden.grad is not None and torch.count_nonzero(hidden.grad) == 0
        assert weight.grad is not None and torch.count_nonzero(weight.grad) == 0
