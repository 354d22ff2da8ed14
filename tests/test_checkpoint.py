"""jaxinv.checkpoint: restore with and without a target structure."""
import numpy as np
import optax
import pytest

import jax
import jax.numpy as jnp


def _state():
    params = {"w": jnp.arange(6.0).reshape(2, 3), "b": jnp.ones(3)}
    tx = optax.adam(1e-2)
    opt_state = tx.init(params)
    grads = jax.tree_util.tree_map(jnp.ones_like, params)
    _, opt_state = tx.update(grads, opt_state, params)  # non-trivial moments and count
    return tx, params, opt_state


def test_restore_into_target_keeps_optax_types(tmp_path):
    from jaxinv.checkpoint import Checkpointer

    tx, params, opt_state = _state()
    ck = Checkpointer(tmp_path / "ck", "fp")
    assert ck.restore() is None and ck.restore(target=(params, opt_state)) is None
    ck.save(3, (params, opt_state))
    ck.close()

    ck = Checkpointer(tmp_path / "ck", "fp")
    # a fresh, zero-moment state only lends its structure
    fresh = tx.init(jax.tree_util.tree_map(jnp.zeros_like, params))
    step, (p2, s2) = ck.restore(target=(params, fresh))
    assert step == 3
    assert jax.tree_util.tree_structure(s2) == jax.tree_util.tree_structure(opt_state)
    assert type(s2[0]).__name__ == "ScaleByAdamState"
    for a, b in zip(jax.tree_util.tree_leaves((params, opt_state)), jax.tree_util.tree_leaves((p2, s2))):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # the restored state steps exactly like the original
    g = jax.tree_util.tree_map(jnp.ones_like, params)
    u1, _ = tx.update(g, opt_state, params)
    u2, _ = tx.update(g, jax.tree_util.tree_map(jnp.asarray, s2), p2)
    for a, b in zip(jax.tree_util.tree_leaves(u1), jax.tree_util.tree_leaves(u2)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6)

    # without a target (the old call): same values, plain containers
    step, tree = ck.restore()
    assert step == 3 and not hasattr(tree[1][0], "_fields")
    np.testing.assert_array_equal(np.asarray(tree[0]["w"]), np.asarray(params["w"]))
    ck.close()


def test_fingerprint_mismatch_refused(tmp_path):
    from jaxinv.checkpoint import Checkpointer

    ck = Checkpointer(tmp_path / "ck", "a")
    ck.save(1, {"x": np.zeros(2)})
    ck.close()
    with pytest.raises(ValueError, match="different run"):
        Checkpointer(tmp_path / "ck", "b")
