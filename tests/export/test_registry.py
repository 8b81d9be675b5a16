"""The registry itself: every entry and family has a test, names resolve, dependencies come first."""

from pathlib import Path

import pytest

from export.registry import FAMILIES, VARIANTS, get_variant, resolve
from tests.export.test_variants import EXPECTED

# the test of each family of variants named by a pattern (registry.FAMILIES)
FAMILY_TESTS = {
    "sim-w{k}": ("test_registry.py", "test_sim_widths_resolve_for_2_to_8_bits_only"),
    "noise@{variant}": ("test_noise.py", "test_noise_matches_the_error_energy_tensor_by_tensor"),
}


def test_every_registry_entry_has_a_parity_test():
    """Adding a variant without saying what its graph, bits and parity must be fails here."""
    missing = sorted(set(VARIANTS) - set(EXPECTED))
    assert not missing, f"variants without a parity expectation in tests/export/test_variants.py: {missing}"
    assert not set(EXPECTED) - set(VARIANTS), "expectations for variants that no longer exist"


def test_every_family_has_a_test():
    assert set(FAMILY_TESTS) == set(FAMILIES), "a family in export/registry.py FAMILIES without a test here"
    for module, test in FAMILY_TESTS.values():
        assert f"def {test}(" in (Path(__file__).parent / module).read_text()


def test_entries_declare_what_they_are():
    for v in VARIANTS.values():
        assert v.backend and v.method and 2 <= v.bits <= 32
        assert set(v.quantizes) <= {"blocks", "embeddings", "lm_head"}
        assert (v.bits == 32) == (not v.quantizes)
        assert 0 <= v.tolerance.min_agreement <= 1
        if v.runner == "torch":
            assert v.load is not None


def test_sim_widths_resolve_for_2_to_8_bits_only():
    assert get_variant("sim-w5").simulated_bits == 5
    assert get_variant("sim-w2").bits == 2
    for bad in ("sim-w1", "sim-w9"):
        with pytest.raises(KeyError, match="2 to 8"):
            get_variant(bad)


def test_unknown_variant_suggests_a_name():
    with pytest.raises(KeyError, match="did you mean 'ort-int8'"):
        get_variant("ort-itn8")


def test_resolve_puts_the_source_variant_first():
    names = [v.name for v in resolve(["ort-int4"])]
    assert names == ["onnx-fp32", "ort-int4"]
    assert [v.name for v in resolve(["all"])] == list(VARIANTS)


def test_a_variant_travels_to_a_worker_as_its_registry_entry():
    """Workers get Variant objects (pickle, or Ray's cloudpickle) carried by name: the registry entry
    comes back, with closures pickle could not carry."""
    import pickle

    from export.registry import VARIANTS, get_variant

    for name in [*VARIANTS, "sim-w4", "noise@ort-int4"]:
        variant = get_variant(name)
        back = pickle.loads(pickle.dumps(variant))
        if name in VARIANTS:
            assert back is VARIANTS[name]
        else:  # made by the registry on demand: an equal entry, with builders of its own
            assert (back.name, back.needs, back.bits, back.quantizes, back.method, back.simulated_bits,
                    back.noise_of) == (name, variant.needs, variant.bits, variant.quantizes, variant.method,
                                       variant.simulated_bits, variant.noise_of)
