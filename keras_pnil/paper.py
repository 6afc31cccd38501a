"""The numbers Schwinn et al. publish in Table 1 of *Towards Rapid and Robust Adversarial Training with
One-Step Attacks*, which every table of ours prints below its own rows."""

COLUMNS = ("clean", "spsa", "pgd", "min")  # the paper's; other attacks get columns before Min
DATASET_TITLES = {"mnist": "MNIST", "fashion_mnist": "Fashion-MNIST", "cifar10": "CIFAR-10"}

# Table 1 of Schwinn et al. (percent, mean ± std over 5×2 folds): (clean, spsa, pgd, min).
PAPER_TABLE1 = {
    ("cifar10", False, "rfgsm"): ("75±0", "58±3", "52±0", "52*±0"),
    ("cifar10", False, "nfgsm"): ("77±1", "53±3", "50±0", "50*±0"),
    ("cifar10", True, "rfgsm"): ("68±0", "63±1", "57±0", "57*±0"),
    ("cifar10", True, "nfgsm"): ("66±0", "65±2", "57±0", "57*±0"),
    ("fashion_mnist", False, "rfgsm"): ("83±1", "2±1", "58±9", "2*±1"),
    ("fashion_mnist", False, "nfgsm"): ("85±0", "3±2", "64±8", "3*±2"),
    ("fashion_mnist", True, "rfgsm"): ("80±0", "74±1", "70±0", "70*±0"),
    ("fashion_mnist", True, "nfgsm"): ("82±0", "78±1", "67±0", "67*±0"),
    ("mnist", False, "rfgsm"): ("98±0", "46±28", "61±25", "46±28"),
    ("mnist", False, "nfgsm"): ("98±0", "23±36", "54±11", "23±36"),
    ("mnist", True, "rfgsm"): ("98±0", "79±1", "55±9", "55±9"),
    ("mnist", True, "nfgsm"): ("98±0", "77±1", "60±4", "60±4"),
}
