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


def _damage(step_dir, how):
    files = sorted(p for p in step_dir.rglob("*") if p.is_file())
    assert files
    for p in files:
        data = p.read_bytes()
        p.write_bytes(data[: len(data) // 2] if how == "truncate" else b"\x00garbled" * 7)


@pytest.mark.parametrize("how", ["truncate", "garble"])
def test_damaged_latest_step_falls_back_to_previous(tmp_path, how, caplog):
    from jaxinv.checkpoint import Checkpointer

    ck = Checkpointer(tmp_path / "ck", "fp")
    ck.save(1, {"x": np.zeros(3)})
    ck.save(2, {"x": np.ones(3)})
    ck.close()
    _damage(tmp_path / "ck" / "orbax" / "2", how)

    ck = Checkpointer(tmp_path / "ck", "fp")
    with caplog.at_level("WARNING", logger="jaxinv.checkpoint"):
        step, tree = ck.restore()
    assert step == 1
    np.testing.assert_array_equal(np.asarray(tree["x"]), np.zeros(3))
    assert any("step 2" in r.getMessage() and "previous step" in r.getMessage() for r in caplog.records)
    # the damaged step is kept aside, and the resumed run can write that step number again
    assert (tmp_path / "ck" / "corrupt" / "2").is_dir()
    ck.save(2, {"x": np.full(3, 7.0)})
    ck.close()
    step, tree = Checkpointer(tmp_path / "ck", "fp").restore()
    assert step == 2
    np.testing.assert_array_equal(np.asarray(tree["x"]), np.full(3, 7.0))


def test_no_readable_step_is_a_one_line_error_naming_the_folder(tmp_path):
    from jaxinv.checkpoint import CheckpointError, Checkpointer

    ck = Checkpointer(tmp_path / "ck", "fp")
    ck.save(1, {"x": np.zeros(3)})
    ck.save(2, {"x": np.ones(3)})
    ck.close()
    for step in (1, 2):
        _damage(tmp_path / "ck" / "orbax" / str(step), "garble")
    ck = Checkpointer(tmp_path / "ck", "fp")
    with pytest.raises(CheckpointError) as info:
        ck.restore()
    msg = str(info.value)
    assert "\n" not in msg and str(tmp_path / "ck") in msg and "no readable checkpoint" in msg
    assert isinstance(info.value, FileNotFoundError)  # the CLI prints these in one line
    # nothing is moved when there is nothing to resume from
    assert (tmp_path / "ck" / "orbax" / "1").is_dir() and not (tmp_path / "ck" / "corrupt").exists()
