import json

from keras_pnil import figures, history, report, summary


def _records(pnil_min):
    rows = []
    for fold, value in enumerate(pnil_min):
        rows.append(dict(dataset="mnist", method="nfgsm", pnil=True, fold=fold, clean=0.98, spsa=value + 0.1,
                         pgd=value, min=value, n_train=30000, n_test=30000))
        rows.append(dict(dataset="mnist", method="nfgsm", pnil=False, fold=fold, clean=0.98, spsa=0.2 + 0.01 * fold,
                         pgd=0.5, min=0.2 + 0.01 * fold, n_train=30000, n_test=30000))
    return rows


def test_tables_carry_budget_paper_numbers_and_significance(tmp_path):
    paths = report.write_tables(_records([0.60 + 0.001 * i for i in range(10)]), tmp_path, "TEST BUDGET")
    md = paths["md"].read_text()
    assert "TEST BUDGET" in md and "| MNIST | + PNIL | paper | 98±0 | 77±1 | 60±4 | 60±4 |" in md
    assert "| MNIST | + PNIL | ours | 98±0 | 70±0 | 60±0 | **60*±0** |" in md  # significant: starred
    assert "TEST BUDGET" in paths["csv"].read_text() and r"\textbf{60*$\pm$0}" in paths["tex"].read_text()
    data = json.loads(paths["json"].read_text())
    assert data["significance"]["mnist/nfgsm"]["p"] < 0.003
    noisy = report.markdown(_records([0.1, 0.9, 0.15, 0.3, 0.2, 0.25, 0.3, 0.1, 0.12, 0.18]), "b")
    assert "*±" not in noisy.split("ours")[1].split("\n")[0]  # not significant: no star


def test_attack_columns_follow_the_registry():
    assert report.ATTACK_COLUMNS[:2] == ("spsa", "pgd") and "autoattack" in report.ATTACK_COLUMNS
    assert report.columns([{"square": 0.5}]) == ("clean", "spsa", "pgd", "square", "min")


def test_figures_are_written(trained_pair, tmp_path, mnist):
    _, (xt, _) = mnist
    layer = trained_pair[True].get_layer("pnil")
    maps = figures.plot_pnil_maps(layer, xt[0], tmp_path / "maps.png")
    curve = figures.plot_curve([1, 10, 100], {"PNIL": [0.9, 0.7, 0.65]}, tmp_path / "eot.png", "EOT samples", "t",
                               log_x=True)
    for path in (maps, curve):
        assert path.stat().st_size > 5000 and path.read_bytes()[:4] == b"\x89PNG"
    assert not list(tmp_path.glob(".*"))  # no temporary files left behind


def test_collapse_epoch_is_the_first_big_fall():
    assert history.collapse_epoch([0.5, 0.6, 0.3, 0.1]) == 3
    assert history.collapse_epoch([0.5, 0.45, 0.4]) is None


def test_pnil_noise_curves_are_drawn_only_for_runs_that_logged_them(tmp_path):
    pnil, plain = tmp_path / "pnil.csv", tmp_path / "plain.csv"
    pnil.write_text("epoch,pnil_sigma_object,pnil_sigma_background\n0,0.08,0.08\n1,0.05,0.09\n")
    plain.write_text("epoch,val_loss\n0,0.3\n1,0.2\n")
    assert figures.plot_pnil_history({"baseline": plain}, tmp_path / "none.png", "t") is None
    path = figures.plot_pnil_history({"baseline": plain, "PNIL": pnil}, tmp_path / "sigma.png", "t")
    assert path.stat().st_size > 5000 and path.read_bytes()[:4] == b"\x89PNG"
    assert not (tmp_path / "none.png").exists()


def test_training_columns_say_how_many_epochs_ran_and_which_was_best(tmp_path):
    from keras_pnil.reproduce import RunSpec

    spec = RunSpec("mnist", "nfgsm", True, 0)
    log = tmp_path / "history.csv"
    log.write_text("epoch,val_loss\n0,0.5\n1,0.3\n2,0.35\n3,0.31\n4,0.4\n")
    row = summary.training_columns([spec], {spec.name: log}, {f"train/{spec.name}": 42.0})[spec.name]
    assert row["epochs"] == "5 (best 2)" and row["train s"] == "42"


def test_wall_time_counts_only_the_reported_runs_per_data_set():
    from keras_pnil.reproduce import RunSpec

    mnist, fashion = RunSpec("mnist", "nfgsm", True, 0), RunSpec("fashion_mnist", "nfgsm", True, 0)
    timings = {f"train/{mnist.name}": 600.0, f"evaluate/{mnist.name}": 1200.0,
               f"train/{fashion.name}": 60.0, f"evaluate/{fashion.name}": 120.0, "figures": 30.0}
    assert summary.timings_markdown(timings, [fashion]) == \
        "fashion_mnist train 1.0 min, fashion_mnist evaluate 2.0 min, figures 0.5 min; total 3.5 min"
    both = summary.timings_markdown(timings, [mnist, fashion])
    assert both.startswith("mnist train 10.0 min, mnist evaluate 20.0 min") and both.endswith("total 33.5 min")


def test_a_table_over_two_data_sets_states_each_ones_budget():
    records = [{"dataset": "mnist", "pnil": False, "budget": "ε=0.03137, EOT 1"},
               {"dataset": "mnist", "pnil": True, "budget": "ε=0.03137, EOT 10"},
               {"dataset": "fashion_mnist", "pnil": True, "budget": "ε=0.01569, EOT 10"}]
    assert report.table_budget(records) == "MNIST: ε=0.03137, EOT 10; Fashion-MNIST: ε=0.01569, EOT 10"
    assert report.table_budget(records[:2]) == "ε=0.03137, EOT 10"
