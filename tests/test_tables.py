"""Table 1 of 000_* (Suetake et al.) reproduced through synopt.energy on the zoo's architectures."""

import pytest

from synopt import energy, zoo


def account(name: str, convention: str = "exact") -> energy.NetworkAccount:
    spec = zoo.get_spec(name)
    return energy.analyze(zoo.build(name), (spec.in_channels, *spec.input_size), convention=convention)


def test_vgg11_table1():
    acc = account("vgg11")
    assert acc.omega_all_firing("total") == 249_856
    assert acc.omega_all_firing("balance") == 10


def test_resnet18_table1():
    acc = account("resnet18")
    assert acc.omega_all_firing("total") == 671_744
    assert acc.omega_all_firing("balance") == 20
    assert account("resnet18", "eq7").omega_all_firing("syn") == 553_730_048


def test_cnn7_table1_balance_and_our_total():
    acc = account("cnn7")
    assert acc.omega_all_firing("balance") == 6
    # Table 1 says 59,688; Table 5's layout at 1x28x28 holds 64*13*13 + 128*8*8 + 256*6*6 + (128+64+10)*6*6 neurons
    assert acc.omega_all_firing("total") == 64 * 169 + 128 * 64 + 256 * 36 + (128 + 64 + 10) * 36 == 35_496


def test_eq7_equals_exact_where_no_padding_or_pooling_differs():
    # Between CNN7's spiking layers every conv is stride 1 without padding and its outputs cover every input position,
    # so the per-layer average of Eq. 7 and the exact count agree in total.
    assert account("cnn7").omega_all_firing("syn") == pytest.approx(account("cnn7", "eq7").omega_all_firing("syn"))


@pytest.mark.parametrize("p", [1, 2])
def test_omega_syn_all_firing_equals_sum_of_psi(p):
    acc = account("vgg11")
    assert acc.omega_all_firing("syn", p=p) == pytest.approx(sum(layer.synapses for layer in acc.layers) / p)
