"""Behaviour of LangevinSegmenter: learning, input forms, online labels, errors."""

import copy
import pickle
import warnings

import joblib
import numpy as np
import pytest
import torch
from conftest import TINY
from sklearn.exceptions import ConvergenceWarning

from nldseg import LangevinSegmenter
from nldseg._frontend import label_sequences
from nldseg._inference import hold_steps, hysteresis_labels
from nldseg.datasets import make_markov_chain_sequences
from nldseg.metrics import n_label_changes, segmentation_accuracy

# A fixed budget of 240 steps (early stopping off), so that tests counting the
# ELBO's calls count training steps only.
# n_lags=0: one training run per fit (n_lags="auto" trains again with a lag
# after a one-well fit, as many of the short fits below are; tested on its own).
# On the CPU, as conftest's fixtures (its seeds were chosen on the CPU's streams).
FAST = dict(device="cpu", hidden_size=32, context_size=16, window_length=40, batch_size=64,
            max_iter=240, early_stopping=False, learning_rate_init=1e-2,
            kl_warmup=60, n_paths=4, random_state=0, n_lags=0, n_init=1)


def _data(n_sequences, n_timesteps, seed):
    return make_markov_chain_sequences(
        n_sequences, n_timesteps, n_states=3, n_features=8, switch_prob=0.025,
        random_state=seed, emission_random_state=1)


@pytest.fixture(scope="module")
def chain():
    X, y = _data(120, 100, seed=0)
    X_test, y_test = _data(20, 150, seed=1)
    return X, y, X_test, y_test


@pytest.fixture(scope="module")
def fitted(chain):
    X, _, _, _ = chain
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        seg = LangevinSegmenter(**FAST).fit(X)
    assert seg.n_states_ == 3
    return seg


def test_learns_three_state_chain(fitted, chain):
    _, _, X_test, y_test = chain
    assert fitted.n_states_ == 3
    acc = segmentation_accuracy(y_test, fitted.predict(X_test))  # one-to-one
    assert acc >= 0.9, acc


def test_occupancy_is_a_distribution(fitted):
    for method in ("sampled", "zeroth_order", "second_order"):
        occ = fitted.energy_.occupancy(method)
        assert occ.shape == (fitted.n_states_,)
        assert np.all(occ >= 0)
        np.testing.assert_allclose(occ.sum(), 1.0, rtol=1e-9)
    np.testing.assert_array_equal(fitted.state_occupancy_,
                                  fitted.energy_.occupancy("sampled"))
    # States are ordered by occupancy, largest first.
    assert np.all(np.diff(fitted.state_occupancy_) <= 1e-12)
    # No state is degenerate (the true occupancy is 1/3 each).
    assert np.all(fitted.state_occupancy_ > 0.15)


def test_energy_landscape_object(fitted):
    land = fitted.energy_
    d = fitted.latent_dim
    assert land.minima.shape == (fitted.n_states_, d)
    z = np.random.default_rng(0).standard_normal((5, d))
    assert land(z).shape == (5,)
    # The analytic gradient matches autograd on the float64 energy.
    zt = torch.tensor(z, requires_grad=True)
    land._energy64(zt).sum().backward()
    np.testing.assert_allclose(land.gradient(z), zt.grad.numpy(), rtol=1e-6,
                               atol=1e-8)
    np.testing.assert_allclose(land.gradient(land.minima), 0.0, atol=1e-5)
    h = land.hessian(land.minima)
    np.testing.assert_allclose(h, np.swapaxes(h, 1, 2), atol=1e-8)
    assert np.all(np.linalg.eigvalsh(h) > 0)
    np.testing.assert_array_equal(land.predict(land.minima),
                                  np.arange(fitted.n_states_))
    np.testing.assert_allclose(land(land.minima), land.minima_energies)
    with pytest.raises(ValueError, match="latent points of shape"):
        land(np.zeros((2, d + 1)))
    with pytest.raises(ValueError, match="method must be one of"):
        land.occupancy("first_order")


def test_input_forms_mirror_output(fitted, chain):
    X = chain[2][:3, :50]
    labels3d = fitted.predict(X)
    assert labels3d.shape == (3, 50) and labels3d.dtype.kind == "i"
    proba3d = fitted.predict_proba(X)
    assert proba3d.shape == (3, 50, fitted.n_states_)
    assert len(np.unique(labels3d)) >= 2
    # list of different lengths
    seqs = [X[0], X[1, :20], X[2, :35]]
    out = fitted.predict(seqs)
    assert [o.shape for o in out] == [(50,), (20,), (35,)]
    # 2-D with lengths gives the same labels as the list
    flat = np.concatenate(seqs)
    np.testing.assert_array_equal(fitted.predict(flat, lengths=[50, 20, 35]),
                                  np.concatenate(out))
    # one 2-D sequence
    assert fitted.predict(X[0]).shape == (50,)
    assert fitted.transform(X).shape == (3, 50, fitted.latent_dim)
    assert [z.shape for z in fitted.transform(seqs)] == [(50, 3), (20, 3), (35, 3)]


@pytest.mark.parametrize("inference", ["markov", "filter"])
def test_predict_reads_proba_with_hysteresis(fitted, chain, inference):
    """``predict`` is ``predict_proba``'s argmax held by ``switch_margin``; 0 gives
    the argmax itself. Refitting is not needed to change the margin."""
    X = chain[2][:4]
    fitted = copy.copy(fitted).set_params(inference=inference)
    proba = fitted.predict_proba(X)
    np.testing.assert_allclose(proba.sum(-1), 1.0)
    labels = fitted.predict(X)
    np.testing.assert_array_equal(
        labels, [hysteresis_labels(p, fitted.switch_margin) for p in proba])
    argmax = copy.copy(fitted).set_params(switch_margin=0.0)
    np.testing.assert_array_equal(argmax.predict(X), proba.argmax(-1))
    np.testing.assert_array_equal(argmax.predict_proba(X), proba)
    # The margin only removes label changes.
    changes = n_label_changes(list(labels))
    assert 0 < changes <= n_label_changes(list(proba.argmax(-1)))


def test_the_margin_removes_the_changes_of_probabilities_crossing_back(fitted, chain):
    """Where a state's probability crosses another's back and forth, the held
    labels change less often than the argmax: some such crossings occur on
    these 20 test sequences under one of the two filters (which one depends
    on the fit), so this cannot pass with the margin ignored."""
    removed = 0
    for inference in ("markov", "filter"):
        seg = copy.copy(fitted).set_params(inference=inference)
        proba = seg.predict_proba(chain[2])
        removed += (n_label_changes(list(proba.argmax(-1)))
                    - n_label_changes(list(seg.predict(chain[2]))))
    assert removed > 0


def test_switch_hold_drops_short_visits_and_auto_reads_the_training_dwell(fitted,
                                                                          chain):
    """``switch_hold`` steps of lead before a switch: ``predict`` and the stream
    apply it as :func:`hysteresis_labels` does; ``"auto"`` takes 0.2 % of
    ``training_dwell_time_``, which is the training data's mean dwell as the
    posterior paths see it."""
    X, y, X_test, _ = chain
    true_dwell = sum(len(r) - 1 for r in y) / sum(int((np.diff(r) != 0).sum()) for r in y)
    assert 0.5 * true_dwell < fitted.training_dwell_time_ < 2.0 * true_dwell
    assert fitted.switch_hold == "auto"
    # States that change every ~20 steps: "auto" holds no step.
    assert hold_steps("auto", fitted.training_dwell_time_) == 0
    proba = fitted.predict_proba(X_test[:6])
    held = copy.copy(fitted).set_params(switch_hold=3)
    labels = held.predict(X_test[:6])
    np.testing.assert_array_equal(
        labels, [hysteresis_labels(p, fitted.switch_margin, hold=3) for p in proba])
    # Fewer changes than without the hold, not none: the test can fail.
    changes = n_label_changes(list(labels))
    assert 0 < changes < n_label_changes(list(fitted.predict(X_test[:6])))
    stream = held.stream()
    online = [stream.update(x_t)[0] for x_t in X_test[0]]
    np.testing.assert_array_equal(online, labels[0])
    # The command line and the service label by the same rule.
    served, _ = label_sequences(held, X_test[:6], with_proba=True)
    np.testing.assert_array_equal(served, labels)
    # "auto" on a model of long-lived states holds for 0.2 % of their dwell.
    slow = copy.copy(fitted)
    slow.training_dwell_time_ = 1500.0
    np.testing.assert_array_equal(
        slow.predict(X_test[:6]),
        [hysteresis_labels(p, fitted.switch_margin, hold=3) for p in proba])


def test_causality(fitted, chain):
    x = chain[2][0]
    full_labels = fitted.predict(x)
    assert len(np.unique(full_labels[:60])) >= 2
    full_proba = fitted.predict_proba(x)
    full_z = fitted.transform(x)
    for k in (1, 2, 37, 120):
        np.testing.assert_array_equal(fitted.predict(x[:k]), full_labels[:k])
        np.testing.assert_array_equal(fitted.predict_proba(x[:k]), full_proba[:k])
        # The GRU may batch its input projection differently by length: 1 ulp.
        np.testing.assert_allclose(fitted.transform(x[:k]), full_z[:k], rtol=1e-5,
                                   atol=1e-6)
    # Changing the future leaves the past untouched.
    x2 = x.copy()
    x2[60:] += 5.0
    np.testing.assert_array_equal(fitted.predict(x2)[:60], full_labels[:60])


def test_inference_is_deterministic(fitted, chain):
    X = chain[2][:3]
    proba = fitted.predict_proba(X)
    assert len(np.unique(proba.argmax(-1))) >= 2
    np.testing.assert_array_equal(fitted.predict_proba(X), proba)
    assert fitted.score(X) == fitted.score(X)


@pytest.fixture(scope="module")
def refitted(tiny_data):
    """A second fit of tiny_fitted's estimator, by fit_predict: (estimator, labels)."""
    est = LangevinSegmenter(**TINY)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        labels = est.fit_predict(tiny_data[0])
    return est, labels


def test_refit_same_seed_is_identical(refitted, tiny_fitted, tiny_data):
    est, _ = refitted
    assert est.loss_curve_ == tiny_fitted.loss_curve_
    assert est.n_states_ == tiny_fitted.n_states_ == 3
    X = tiny_data[1]
    proba = tiny_fitted.predict_proba(X)
    assert len(np.unique(proba.argmax(-1))) == 3
    np.testing.assert_array_equal(est.predict_proba(X), proba)


def test_score(fitted, chain):
    X_test = chain[2][:5]
    s = fitted.score(X_test)
    assert isinstance(s, float) and np.isfinite(s)
    # Data with its time steps shuffled across sequences has no dwell structure
    # and rows with the emissions mixed up: the model explains it worse.
    rng = np.random.default_rng(0)
    scrambled = X_test[..., rng.permutation(X_test.shape[-1])]
    assert fitted.score(scrambled) < s


def test_score_uses_units_of_x(fitted, chain):
    # Standardisation's Jacobian: rescaling a model and data together shifts
    # the per-step log-density by -n_features * log(scale).
    X = chain[2][:3]
    s = fitted.score(X)
    other = pickle.loads(pickle.dumps(fitted))
    other.scaler_scale_ = other.scaler_scale_ * 10.0
    other.scaler_mean_ = other.scaler_mean_ * 10.0
    s10 = other.score(X * 10.0)
    np.testing.assert_allclose(s10, s - X.shape[-1] * np.log(10.0), rtol=1e-5)


def test_fitted_attributes(fitted):
    assert fitted.n_features_in_ == 8
    assert fitted.n_iter_ == len(fitted.loss_curve_) >= 1
    assert isinstance(fitted.converged_, bool)
    assert all(p.device.type == "cpu" for p in fitted.module_.parameters())
    assert fitted.beta_ == pytest.approx(1.0) and fitted.gamma_ == pytest.approx(1.0)
    # The loss went down.
    assert fitted.loss_curve_[-1] < fitted.loss_curve_[0]


def test_pickle_and_joblib_round_trip(fitted, chain, tmp_path):
    X = chain[2][:2]
    expected = fitted.predict_proba(X)
    assert len(np.unique(expected.argmax(-1))) >= 2
    again = pickle.loads(pickle.dumps(fitted))
    np.testing.assert_array_equal(again.predict_proba(X), expected)
    joblib.dump(fitted, tmp_path / "m.joblib")
    np.testing.assert_array_equal(joblib.load(tmp_path / "m.joblib").predict(X),
                                  fitted.predict(X))


def test_fit_predict_equals_fit_then_predict(refitted, tiny_fitted, tiny_data):
    _, labels = refitted
    expected = tiny_fitted.predict(tiny_data[0])  # fit(X).predict(X)
    assert len(np.unique(expected)) == 3
    np.testing.assert_array_equal(labels, expected)


def test_requested_number_of_states(tiny_data):
    # TINY finds 3 wells on these data (the tiny_fitted fixture): 2 are asked for.
    X, X_test, _ = tiny_data
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        two = LangevinSegmenter(**dict(TINY, n_states=2)).fit(X)
    assert two.n_states_ == 2
    assert set(np.unique(np.concatenate(two.predict(X_test)))) == {0, 1}
    assert two.state_occupancy_.shape == (2,)
    assert two.state_occupancy_.sum() == pytest.approx(1.0)


def test_too_many_states_requested_warns(fitted, chain):
    params = dict(fitted.get_params(), n_states=7, max_iter=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        with pytest.warns(UserWarning, match="n_states=7 was requested"):
            est = LangevinSegmenter(**params).fit(chain[0][:10, :30])
    assert est.n_states_ < 7


def test_underdamped_fits_and_predicts(chain):
    X = chain[0][:20, :40]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        est = LangevinSegmenter(dynamics="underdamped", **dict(FAST, max_iter=2)).fit(X)
    assert est.module_.state_dim == 2 * est.latent_dim
    assert est.predict(X).shape == (20, 40)
    assert est.transform(X).shape == (20, 40, est.latent_dim)
    assert np.isfinite(est.score(X))


def test_learned_langevin_params_move(chain):
    X = chain[0][:20, :40]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        est = LangevinSegmenter(learn_langevin_params=True, beta=2.0,
                                **dict(FAST, max_iter=2)).fit(X)
        fixed = LangevinSegmenter(beta=2.0, **dict(FAST, max_iter=2)).fit(X)
    assert est.beta_ != 2.0
    assert fixed.beta_ == pytest.approx(2.0)


def _nan_loss_on_calls(monkeypatch, bad_calls) -> None:
    """Make the ELBO's likelihood NaN on the given (1-based) calls."""
    from nldseg import _model

    original = _model.NeuralLangevinVAE.elbo_terms
    calls = {"n": 0}

    def flaky(self, *args, **kwargs):
        log_lik, kl = original(self, *args, **kwargs)
        calls["n"] += 1
        return (log_lik * float("nan"), kl) if calls["n"] in bad_calls else (log_lik, kl)

    monkeypatch.setattr(_model.NeuralLangevinVAE, "elbo_terms", flaky)


def test_nan_loss_rolls_back_and_warns(chain, monkeypatch):
    _nan_loss_on_calls(monkeypatch, (2, 3))
    est = LangevinSegmenter(**dict(FAST, max_iter=2, learning_rate_init=1e-2))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        with pytest.warns(RuntimeWarning, match="rolled back .* learning rate"):
            est.fit(chain[0][:40, :40])
    assert np.all(np.isfinite(est.loss_curve_))
    assert all(torch.isfinite(p).all() for p in est.module_.parameters())


@pytest.mark.parametrize("max_iter", [2, 20])
def test_unrecoverable_nan_raises_and_leaves_estimator_unfitted(chain, monkeypatch,
                                                                 max_iter):
    from nldseg import _model

    original = _model.NeuralLangevinVAE.elbo_terms

    def broken(self, *args, **kwargs):
        log_lik, kl = original(self, *args, **kwargs)
        return log_lik * float("nan"), kl

    monkeypatch.setattr(_model.NeuralLangevinVAE, "elbo_terms", broken)
    est = LangevinSegmenter(**dict(FAST, max_iter=max_iter))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        with pytest.raises(RuntimeError, match="Training diverged|no training step"):
            est.fit(chain[0][:10, :30])
    assert not hasattr(est, "module_") and not hasattr(est, "energy_")


@pytest.mark.parametrize("params, err, match", [
    ({"dynamics": "critical"}, ValueError, "dynamics must be one of"),
    ({"dt": 0.3}, ValueError, "dt must be 1/n"),
    ({"beta": -1.0}, ValueError, "beta must be a positive"),
    ({"gamma": 0}, ValueError, "gamma must be a positive"),
    ({"gamma": float("nan")}, ValueError, "gamma must be a positive"),
    ({"n_states": 0}, ValueError, "n_states must be a positive integer or None"),
    ({"latent_dim": 1.5}, TypeError, "latent_dim must be a positive integer, got 1.5 "
                                     "of type float"),
    ({"max_iter": True}, TypeError, "max_iter must be a positive integer"),
    ({"beta": "1"}, TypeError, "beta must be a real number"),
    ({"solver": "rk4"}, ValueError, "solver must be one of"),
    ({"min_state_fraction": 1.0}, ValueError, "min_state_fraction must be in"),
    ({"prior_weight": 1.5}, ValueError, r"prior_weight must be in \[0, 1\]"),
    ({"prior_weight": -0.1}, ValueError, "prior_weight must be in"),
    ({"inference": "smoother"}, ValueError, "inference must be one of"),
    ({"n_particles": 0}, ValueError, "n_particles must be a positive integer"),
    ({"device": "tpu"}, ValueError, "device must be"),
    ({"device": 0}, TypeError, "device must be"),
    ({"initial_prior": "uniform"}, ValueError, "initial_prior must be one of"),
    ({"learning_rate": "linear"}, ValueError, "learning_rate must be one of"),
    ({"learning_rate": 0.01}, TypeError, "learning_rate must be one of"),
    ({"learn_langevin_params": "yes"}, TypeError, "learn_langevin_params must be a bool"),
    ({"kl_warmup": -1}, ValueError, "kl_warmup must be an integer >= 0"),
    ({"depth_steps": -1}, ValueError, "depth_steps must be an integer >= 0"),
    ({"depth_steps": 2.5}, TypeError, "depth_steps must be an integer"),
    ({"switch_hold": -1}, ValueError, "switch_hold must be"),
    ({"switch_hold": 1.5}, TypeError, "switch_hold must be"),
    ({"switch_hold": "long"}, TypeError, "switch_hold must be an integer >= 0 or .auto."),
    ({"n_jobs": 0}, ValueError, "n_jobs must be 'auto', None or a nonzero int"),
    ({"n_jobs": "all"}, TypeError, "n_jobs must be 'auto', None or a nonzero int"),
])
def test_bad_parameters_raise(params, err, match):
    X = np.zeros((10, 2))
    with pytest.raises(err, match=match):
        LangevinSegmenter(**params).fit(X)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_device_past_the_last_gpu_raises():
    n = torch.cuda.device_count()
    with pytest.raises(ValueError, match=f"has {n} CUDA device"):
        LangevinSegmenter(device=f"cuda:{n}").fit(np.zeros((10, 2)))


def test_bad_inputs_raise_and_do_not_touch_model(fitted, chain):
    X = chain[2][:2, :30]
    before = fitted.predict(X)
    assert len(np.unique(before)) >= 2
    bad = [
        (np.full((10, 8), np.nan), ValueError, "NaN"),
        (np.zeros(8), ValueError, "2-D array"),
        (np.zeros((2, 3, 4, 8)), ValueError, "dimension"),
        (np.zeros((10, 5)), ValueError, "5 features"),
        ([], ValueError, "empty list"),
        ([np.zeros((5, 8)), np.zeros((5, 4))], ValueError, "same number of features"),
    ]
    for X_bad, err, match in bad:
        with pytest.raises(err, match=match):
            fitted.predict(X_bad)
    with pytest.raises(ValueError, match="lengths sum to 9"):
        fitted.predict(np.zeros((10, 8)), lengths=[4, 5])
    with pytest.raises(ValueError, match="lengths must all be >= 1"):
        fitted.predict(np.zeros((10, 8)), lengths=[10, 0])
    with pytest.raises(ValueError, match="lengths must contain integers"):
        fitted.predict(np.zeros((10, 8)), lengths=[4.5, 5.5])
    np.testing.assert_array_equal(fitted.predict(X), before)


def test_torchsde_solver_matches_fused_loop(chain):
    """Same Brownian increments -> same latent paths and KL from both solvers."""
    from nldseg._model import NeuralLangevinVAE

    torch.manual_seed(0)
    for dynamics in ("overdamped", "underdamped"):
        m = NeuralLangevinVAE(8, 3, dynamics, 16, 8, 1.5, 0.7, 1.3, False)
        with torch.no_grad():
            m.drift_net.out.weight.normal_(std=0.3)
        x = torch.as_tensor(chain[0][:4, :12], dtype=torch.float32)
        noise = torch.randn(11, 2, 4, 3)
        eps0 = torch.randn(4, m.state_dim)
        fused = m.simulate(x, noise, 0.5, eps0=eps0)
        ref = m.simulate(x, noise, 0.5, eps0=eps0, solver="torchsde")
        torch.testing.assert_close(ref.z, fused.z, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(ref.kl_path, fused.kl_path, rtol=1e-4, atol=1e-5)
        assert float(fused.kl_path.detach().sum()) > 0


def _interrupt_at(monkeypatch, call):
    from nldseg import _model

    original = _model.NeuralLangevinVAE.elbo_terms
    calls = {"n": 0}

    def interrupted(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == call:
            raise KeyboardInterrupt
        return original(self, *args, **kwargs)

    monkeypatch.setattr(_model.NeuralLangevinVAE, "elbo_terms", interrupted)


def test_ctrl_c_keeps_the_parameters_before_the_last_update(chain, monkeypatch):
    X = chain[0][:40, :40]  # 40 windows: one batch per pass
    kw = dict(FAST, kl_warmup=0, max_iter=30, learning_rate="constant")
    _interrupt_at(monkeypatch, 6)
    est = LangevinSegmenter(**kw)
    with pytest.warns(UserWarning, match="interrupted by the user after 5 step"):
        est.fit(X)
    monkeypatch.undo()
    assert est.n_iter_ == 5 and not est.converged_ and len(est.loss_curve_) == 5
    # The kept model is the one before the fifth update (it may be unfinished).
    ref = LangevinSegmenter(**dict(kw, max_iter=4)).fit(X)
    for a, b in zip(est.module_.parameters(), ref.module_.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert est.predict(X[:2]).shape == (2, 40)


def test_ctrl_c_with_early_stopping_keeps_the_best_held_out_model(chain, monkeypatch):
    X = chain[0][:60, :40]
    kw = dict(FAST, kl_warmup=0, max_iter=200, early_stopping=True,
              learning_rate="constant", n_lags="auto",  # Ctrl-C: no second try.
              n_jobs=1)  # The patched ELBO is this process's only.
    calls = []
    from nldseg._training import _HeldOut

    original = _HeldOut.elbo

    def elbo(self, module, *args):
        calls.append([p.detach().clone() for p in module.parameters()])
        score = original(self, module, *args)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return score

    monkeypatch.setattr(_HeldOut, "elbo", elbo)
    est = LangevinSegmenter(**kw)
    with pytest.warns(UserWarning, match="keeping the model of the best held-out"):
        est.fit(X)
    assert est.n_iter_ == 30  # interrupted at the third check, every 10 steps
    best = int(np.argmax(est.validation_scores_))
    for a, b in zip(est.module_.parameters(), calls[best]):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_ctrl_c_before_first_step_propagates_and_leaves_unfitted(chain, monkeypatch):
    _interrupt_at(monkeypatch, 1)
    est = LangevinSegmenter(**FAST)
    with pytest.raises(KeyboardInterrupt):
        est.fit(chain[0][:10, :30])
    assert not hasattr(est, "module_") and not hasattr(est, "n_features_in_")


def test_verbose_prints_one_line_per_check_and_is_silent_by_default(chain, capsys):
    X = chain[0][:20, :30]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        LangevinSegmenter(**dict(FAST, max_iter=20)).fit(X)
        out = capsys.readouterr()
        assert out.out == "" and out.err == ""
        LangevinSegmenter(**dict(FAST, max_iter=20, verbose=1)).fit(X)
        # With the held-out ELBO watched (the default), and past the first check
        # (a regression once crashed there).
        LangevinSegmenter(**dict(FAST, max_iter=40, verbose=1, early_stopping=True,
                                 kl_warmup=0)).fit(X)
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2 + 4  # a check every 10 steps
    assert lines[1].startswith("Step 20/20: loss ")
    assert "lr " in lines[1] and lines[1].endswith("s")
    assert lines[2].startswith("Step 10/40: loss ") and "held-out ELBO -" in lines[2]


def test_restarts_print_which_run_and_keep_one_model(chain, capsys):
    """n_init=2: both runs train (each line says which), one model is kept."""
    X = chain[0][:20, :30]
    kw = dict(FAST, max_iter=20, n_init=2, verbose=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        seg = LangevinSegmenter(**kw).fit(X)
        one = LangevinSegmenter(**dict(kw, n_init=1, verbose=0)).fit(X)
    lines = capsys.readouterr().out.strip().splitlines()
    # Both runs train to the annealing (step 15; a check at 10), then the kept
    # one alone anneals to step 20.
    assert [line.split(": loss")[0] for line in lines[:2]] == [
        "run 1/2: Step 10/20", "run 2/2: Step 10/20"]
    kept = lines[2].split(" Step 20/20")[0]
    assert kept in ("run 1/2:", "run 2/2:") and len(lines) == 3
    assert seg.n_iter_ == 20 and len(seg.loss_curve_) == 20
    # Kept, the first run is the single model's fit exactly; the second is not.
    same = all(torch.equal(a, b) for a, b in zip(seg.module_.parameters(),
                                                 one.module_.parameters()))
    assert same == (kept == "run 1/2:") == (seg.loss_curve_ == one.loss_curve_)


def test_candidates_side_by_side_train_exactly_as_one_after_the_other(chain, capsys):
    """n_jobs=2 trains the 3 candidates in worker processes: the same fit,
    the same progress lines and warnings, only sooner. (On two workers the
    best restart trains to the end beside the lag's comparison, so the runs'
    lines come in another order; each run's own are the same, in order.)"""
    import re

    X = chain[0][:30, :40]
    kw = dict(FAST, max_iter=40, n_init=2, n_lags="auto", verbose=1)
    fits, lines, said = {}, {}, {}
    for jobs in (1, 2):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            fits[jobs] = LangevinSegmenter(**dict(kw, n_jobs=jobs)).fit(X)
        said[jobs] = [(w.category, str(w.message)) for w in caught]
        # The seconds each check took are the only thing allowed to differ.
        lines[jobs] = re.sub(r", [0-9.]+s\n", "\n", capsys.readouterr().out)
    one, two = fits[1], fits[2]
    def by_run(text):
        runs = {}
        for line in text.splitlines():
            runs.setdefault(line.split(":")[0], []).append(line)
        return runs

    assert by_run(lines[1]) == by_run(lines[2]) and "run 3/4: Step 20/40" in lines[1]
    assert len(by_run(lines[1])) == 4  # The lag won; its second restart trained.
    assert sorted(said[1], key=str) == sorted(said[2], key=str)
    assert one.loss_curve_ == two.loss_curve_
    assert one.validation_scores_ == two.validation_scores_
    np.testing.assert_array_equal(one.candidate_scores_, two.candidate_scores_)
    assert np.isfinite(one.candidate_scores_[:3]).all()  # All three were trained.
    for a, b in zip(one.module_.parameters(), two.module_.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    np.testing.assert_array_equal(one.predict(X[:3]), two.predict(X[:3]))


# Three candidates (two restarts, one lag) of a short fit, for the fallbacks
# of the side-by-side training.
_CANDIDATES = dict(FAST, max_iter=40, n_init=2, n_lags="auto")


@pytest.fixture(scope="module")
def candidates_one_after_the_other(chain):
    """``(X, fit)``: the candidates trained one after the other (``n_jobs=1``)."""
    X = chain[0][:30, :40]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return X, LangevinSegmenter(**dict(_CANDIDATES, n_jobs=1)).fit(X)


def test_without_worker_processes_the_candidates_train_here(
        candidates_one_after_the_other, monkeypatch):
    """Workers that cannot start (no semaphores, no processes left): the fit
    says so and trains the candidates one after the other, the same fit."""
    from nldseg import _parallel

    X, one = candidates_one_after_the_other

    def no_workers(*args, **kwargs):
        raise OSError("sem_open is not available")

    monkeypatch.setattr(_parallel.joblib, "Parallel", no_workers)
    with pytest.warns(UserWarning, match=r"Could not train the candidate models in "
                                         r"worker processes \(OSError: sem_open"):
        two = LangevinSegmenter(**dict(_CANDIDATES, n_jobs=2)).fit(X)
    assert one.loss_curve_ == two.loss_curve_
    np.testing.assert_array_equal(one.candidate_scores_, two.candidate_scores_)


def test_candidates_run_here_when_joblib_runs_the_calls_in_this_process(
        candidates_one_after_the_other, monkeypatch):
    """joblib may run the calls in the calling process after all (it does in a
    multiprocessing.Pool's worker): on the very runs, the same fit."""
    from nldseg import _parallel

    X, one = candidates_one_after_the_other

    def here(n_jobs, backend):
        return lambda calls: [f(*args, **kwargs) for f, args, kwargs in calls]

    monkeypatch.setattr(_parallel.joblib, "Parallel", here)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        two = LangevinSegmenter(**dict(_CANDIDATES, n_jobs=2)).fit(X)
    assert one.loss_curve_ == two.loss_curve_
    for a, b in zip(one.module_.parameters(), two.module_.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def _record_learning_rates(monkeypatch) -> list:
    rates = []
    original = torch.optim.Adam.step

    def step(self, *args, **kwargs):
        rates.append(self.param_groups[0]["lr"])
        return original(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.Adam, "step", step)
    return rates


def _schedule(lr0, begin, steps, n):
    """The expected rates: lr0 until ``begin``, then half a cosine to lr0 / 100."""
    return [lr0 if k < begin else lr0 * (0.01 + 0.99 * 0.5 * (
        1 + np.cos(np.pi * min(1.0, (k + 1 - begin) / steps)))) for k in range(n)]


def test_fixed_budget_anneals_over_its_last_quarter(chain, monkeypatch):
    X = chain[0][:40, :40]  # 40 windows: one batch per pass
    rates = _record_learning_rates(monkeypatch)
    # (depth_steps=0: the refit of the depths after training has its own Adam.)
    est = LangevinSegmenter(**dict(FAST, max_iter=8, kl_warmup=0, depth_steps=0))
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)  # Nothing measured.
        est.fit(X)
    lr0 = FAST["learning_rate_init"]
    np.testing.assert_allclose(rates, _schedule(lr0, 6, 2, 8), rtol=1e-12)
    assert rates[-1] == pytest.approx(lr0 / 100)
    assert not est.converged_ and est.n_iter_ == 8 and est.validation_scores_ == []


def test_plateau_of_the_held_out_elbo_starts_the_annealing(chain, monkeypatch):
    X = chain[0][:60, :40]
    rates = _record_learning_rates(monkeypatch)
    # A check every 400 / 20 = 20 steps; tol so large that no check after the
    # first one past the warm-up (step 20) counts as progress: the plateau is
    # declared at the second check after it (step 60), then 100 annealing steps.
    # (depth_steps=0: the refit of the depths after training has its own Adam.)
    est = LangevinSegmenter(**dict(FAST, max_iter=400, kl_warmup=20, early_stopping=True,
                                   tol=1e6, n_iter_no_change=2, depth_steps=0))
    est.fit(X)
    assert est.converged_ and est.n_iter_ == 60 + 100
    assert len(est.validation_scores_) == 3  # checks at steps 20, 40, 60
    lr0 = FAST["learning_rate_init"]
    np.testing.assert_allclose(rates, _schedule(lr0, 60, 100, 160), rtol=1e-12)


def test_constant_rate_stops_at_the_plateau(chain):
    # depth_steps=0: the refit after training is not what is tested here.
    est = LangevinSegmenter(**dict(FAST, max_iter=400, kl_warmup=20, early_stopping=True,
                                   tol=1e6, n_iter_no_change=2, depth_steps=0,
                                   learning_rate="constant"))
    est.fit(chain[0][:60, :40])
    assert est.converged_ and est.n_iter_ == 60


def test_budget_running_out_while_improving_warns(chain):
    est = LangevinSegmenter(**dict(FAST, max_iter=40, kl_warmup=0, early_stopping=True,
                                   n_iter_no_change=1000))
    with pytest.warns(ConvergenceWarning, match="still improving.*increase max_iter"):
        est.fit(chain[0][:60, :40])
    assert not est.converged_ and est.n_iter_ == 40


def test_budget_shorter_than_the_kl_warmup_warns(chain):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        with pytest.warns(UserWarning, match="end before the KL warm-up"):
            LangevinSegmenter(**dict(FAST, max_iter=5)).fit(chain[0][:20, :30])


def test_a_single_well_says_what_to_change(chain):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        with pytest.warns(UserWarning, match="single well.*max_iter"):
            est = LangevinSegmenter(**dict(FAST, max_iter=3, kl_warmup=0)).fit(
                chain[0][:20, :30])
    assert est.n_states_ == 1


def test_rollback_halves_the_scheduled_rate(chain, monkeypatch):
    _nan_loss_on_calls(monkeypatch, (2,))
    rates = _record_learning_rates(monkeypatch)
    est = LangevinSegmenter(**dict(FAST, max_iter=8, kl_warmup=0, depth_steps=0))
    with pytest.warns(RuntimeWarning, match="halved the learning rate"):
        est.fit(chain[0][:40, :40])
    # Step 2 failed and was retried at half its scheduled rate; the halving
    # carries over to the rest of training.
    sched = _schedule(FAST["learning_rate_init"], 6, 2, 8)
    np.testing.assert_allclose(rates, [sched[0]] + [r / 2 for r in sched[1:]],
                               rtol=1e-12)
    assert len(est.loss_curve_) == 8 and np.all(np.isfinite(est.loss_curve_))


def test_fits_in_concurrent_threads_equal_fits_one_after_another(chain):
    """Two fits at once in threads (a threaded grid search) draw their own weights.

    torch's default generator is the process's; seeding it from two threads
    at once mixed the two fits' initial weights.
    """
    from concurrent.futures import ThreadPoolExecutor

    X = chain[0][:16, :30]
    kw = dict(FAST, max_iter=3, early_stopping=False)

    def fit(beta):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return LangevinSegmenter(**dict(kw, beta=beta)).fit(X).loss_curve_

    serial = [fit(b) for b in (0.5, 2.0)]
    for _ in range(3):
        with ThreadPoolExecutor(2) as pool:
            assert list(pool.map(fit, (0.5, 2.0))) == serial


def test_numpy_integer_parameters_fit(quiet_convergence):
    # A grid built with np.arange hands numpy integers; torch's layers take
    # Python ints only, so the model builder must convert them.
    X = np.random.RandomState(0).randn(4, 20, 3)
    i = np.int64
    seg = LangevinSegmenter(hidden_size=i(8), context_size=i(4), latent_dim=i(2),
                            n_lags=i(1), window_length=i(10), batch_size=i(4),
                            max_iter=i(3), n_paths=i(2), random_state=0).fit(X)
    assert seg.predict(X).shape == (4, 20)
    assert seg.module_.decoder[-1].out_features == 6  # Frames of 3 x (n_lags + 1).


@pytest.mark.parametrize("params, err, match", [
    ({"n_particles": 0}, ValueError, "n_particles must be a positive integer"),
    ({"prior_weight": 2.0}, ValueError, "prior_weight must be in"),
    ({"inference": "viterbi"}, ValueError, "inference must be one of"),
    ({"n_paths": 0}, ValueError, "n_paths must be a positive integer"),
    ({"prior_weight": "0.5"}, TypeError, "prior_weight must be a real number"),
])
def test_inference_parameters_set_after_fit_are_checked(fitted, chain, params, err, match):
    """Inference reads these at call time: a bad value raises and changes nothing."""
    import copy

    X = chain[2][:2, :30]
    before = fitted.predict(X)
    seg = copy.copy(fitted).set_params(**params)
    for call in (seg.predict, seg.predict_proba, seg.transform, seg.score):
        with pytest.raises(err, match=match):
            call(X)
    with pytest.raises(err, match=match):
        seg.stream()
    np.testing.assert_array_equal(fitted.predict(X), before)


def test_fit_warnings_point_at_the_callers_line(chain):
    """Kept across n_lags="auto"'s two tries, and said from the line calling fit."""
    est = LangevinSegmenter(**dict(FAST, max_iter=2, kl_warmup=10, n_lags="auto"))
    with pytest.warns(UserWarning) as record:
        est.fit(chain[0][:20, :30])
    ours = [w for w in record if "single well" in str(w.message)
            or "warm-up" in str(w.message)]
    assert len(ours) >= 2 and all(w.filename == __file__ for w in ours)


# ------------------------------------------------------------ the depths' refit
@pytest.mark.parametrize("fixture, params", [
    ("tiny_fitted", {}),
    ("tiny_underdamped", {"dynamics": "underdamped", "max_iter": 96}),
])
def test_refit_of_the_depths_keeps_the_wells_and_moves_the_occupancy(tiny_data, fixture,
                                                                    params, request):
    """The fixture without the refit against the same fit with it (the same
    training, then ``depth_steps``): the same wells and labels, other depths."""
    X, X_test, y_test = tiny_data
    tiny_fitted = request.getfixturevalue(fixture)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        seg = LangevinSegmenter(**dict(TINY, depth_steps=400, **params)).fit(X)
    assert seg.n_states_ == tiny_fitted.n_states_ == 3
    assert seg.depths_refitted_ and not tiny_fitted.depths_refitted_
    # Training is the same: the refit comes after it.
    np.testing.assert_array_equal(seg.loss_curve_, tiny_fitted.loss_curve_)
    assert segmentation_accuracy(tiny_fitted.predict(X_test), seg.predict(X_test)) >= 0.98
    # The depths moved, and the occupancy is still a distribution.
    assert np.abs(seg.state_occupancy_ - tiny_fitted.state_occupancy_).sum() > 0.01
    assert seg.state_occupancy_.sum() == pytest.approx(1.0)


def test_a_refit_that_changes_the_wells_is_undone(tiny_data, tiny_fitted, monkeypatch):
    """A refit that moves the wells, not only their depths, is rolled back: the
    model is then the one fitted without a refit, to the last bit."""
    import nldseg._estimator as est

    refit = est.refine_depths

    def scramble(module, positions, n_steps, seed, keep):
        def scrambled_then_keep():
            with torch.no_grad():  # A single well: the quadratic term alone.
                for p in module.energy.parameters():
                    p.zero_()
            return keep()

        return refit(module, positions, n_steps, seed, keep=scrambled_then_keep)

    monkeypatch.setattr(est, "refine_depths", scramble)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        seg = LangevinSegmenter(**dict(TINY, depth_steps=5)).fit(tiny_data[0])
    assert seg.n_states_ == 3 and not seg.depths_refitted_
    np.testing.assert_array_equal(seg.state_occupancy_, tiny_fitted.state_occupancy_)
    for a, b in zip(seg.module_.parameters(), tiny_fitted.module_.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    np.testing.assert_array_equal(seg.predict(tiny_data[1]),
                                  tiny_fitted.predict(tiny_data[1]))
