from biovfm_core.testing import check_objective


def test_barlow_twins_follows_the_objective_protocol():
    check_objective("barlow_twins")
