"""Linear probe: logistic regression on the features, preprocessing and C chosen on training rows only."""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import numpy as np

from ..errors import ConfigError
from ._common import (PREPROCESSINGS, FeaturePrep, ResultRecord, _balanced_accuracy, check_choices,
                      check_fraction, selection_splits, small_data_single_thread, supervised_inputs, timed)

DEFAULT_CS = (0.01, 0.1, 1.0, 10.0)


@dataclass
class LinearProbeResult(ResultRecord):
    """Outcome of :func:`linear_probe`.

    ``cv_scores`` maps ``"<preprocessing>/C=<C>"`` to the mean validation accuracy
    over the selection splits (training rows only); ``confusion_matrix[i][j]`` counts
    test rows of class ``classes[i]`` predicted as ``classes[j]``.
    """

    probe = "linear"

    accuracy: float
    balanced_accuracy: float
    macro_f1: float
    preprocessing: str
    C: float
    classes: list
    confusion_matrix: list
    cv_scores: dict
    selection: dict
    n_train: int
    n_test: int
    converged: bool
    seed: int
    timings: dict = field(default_factory=dict)

    def summary(self) -> dict:
        return {"accuracy": self.accuracy, "balanced_accuracy": self.balanced_accuracy, "macro_f1": self.macro_f1}


SOLVERS = ("auto", "lbfgs", "preconditioned")
WIDE_COLUMNS = 1024  # solver="auto": the preconditioned solver from this many feature columns on


def resolve_solver(solver: str, n_columns: int) -> str:
    """The solver ``solver`` names for features of ``n_columns`` columns ('auto' picks by width)."""
    check_choices("solver", (solver,), SOLVERS)
    if solver != "auto":
        return solver
    return "preconditioned" if n_columns >= WIDE_COLUMNS else "lbfgs"


def _fit_logistic(X, y, C, max_iter, model=None, solver="lbfgs", seed=0, start=None):
    """Fit (or refit, warm) a logistic regression; ``start``: (coef, intercept, classes) to begin the first fit at."""
    if model is None:
        # warm start: the C grid is walked in increasing order, each fit starting from the last
        if solver == "lbfgs":
            from sklearn.linear_model import LogisticRegression

            model = LogisticRegression(C=C, max_iter=max_iter, warm_start=True)
        else:
            from .wide_logistic import PreconditionedLogistic

            model = PreconditionedLogistic(C, max_iter=max_iter, warm_start=True, seed=seed)
        if start is not None:
            model.coef_, model.intercept_, model.classes_ = start
    model.set_params(C=C)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # non-convergence is recorded in the result instead
        model.fit(X, y)
    return model


def linear_probe(X_train, y_train, X_test, y_test, *, preprocessings=PREPROCESSINGS, Cs=DEFAULT_CS,
                 cv: int | None = None, val_fraction: float = 0.2, max_select_rows: int | None = 10_000,
                 max_iter: int = 1000, solver: str = "auto", seed: int = 0) -> LinearProbeResult:
    """Logistic-regression probe with hyper-parameters chosen on the training rows.

    Every (preprocessing, C) pair is scored on a validation split (or K folds) of a
    stratified subsample of the training rows; the best pair (first in grid order on
    ties) is refitted on all training rows and scored once on the test rows.

    Parameters
    ----------
    X_train : ndarray of shape (n_train, n_features)
    y_train : ndarray of shape (n_train,)
        Integer labels; rows labelled -1 (unknown) are ignored.
    X_test : ndarray of shape (n_test, n_features)
    y_test : ndarray of shape (n_test,)
        Used only for the final score; rows labelled -1 are ignored.
    preprocessings : sequence of {'standardize', 'l2', 'none'}
        Candidates; each is fitted on the rows it is trained on.
    Cs : sequence of float
        Inverse regularisation strengths to try.
    cv : int or None
        None: one stratified validation split (``val_fraction`` of the rows); int: K-fold CV.
    max_select_rows : int or None
        Choose on at most this many training rows (stratified subsample) so that
        60k x 128 stays affordable; the final fit uses all training rows.
    max_iter : int
        L-BFGS iterations for every fit.
    solver : {'auto', 'lbfgs', 'preconditioned'}
        'lbfgs': scikit-learn's ``LogisticRegression``. 'preconditioned': the same objective,
        stopping rule and warm starts, solved by :class:`~cvae_features.probes.wide_logistic.
        PreconditionedLogistic` (several times fewer iterations on wide, correlated features
        such as raw pixels; it also starts the final refit from the chosen setting's selection
        fit). 'auto': 'preconditioned' from ``WIDE_COLUMNS`` (1,024) columns on, else 'lbfgs'.
        The result's ``selection["solver"]`` records which ran.
    seed : int
        Seeds the subsample and the splits.

    Returns
    -------
    LinearProbeResult
    """
    from sklearn.metrics import accuracy_score, confusion_matrix, f1_score

    preprocessings = check_choices("preprocessings", preprocessings, PREPROCESSINGS)
    Cs = tuple(sorted(float(c) for c in Cs))
    if not Cs or min(Cs) <= 0:
        raise ConfigError(f"Cs: expected one or more positive numbers, got {list(Cs)}")
    check_fraction("val_fraction", val_fraction)
    X_train, y_train, X_test, y_test = supervised_inputs(X_train, y_train, X_test, y_test)
    solver = resolve_solver(solver, X_train.shape[1])
    timings: dict = {}

    with timed(timings, "select_s"):
        splits, selection = selection_splits(y_train, cv=cv, val_fraction=val_fraction,
                                             max_rows=max_select_rows, seed=seed)
        selection["solver"] = solver
        scores = {(p, c): [] for p in preprocessings for c in Cs}
        fitted = {}  # (preprocessing, C) -> the last split's coefficients
        for fit_rows, val_rows in splits:
            for prep_name in preprocessings:
                prep = FeaturePrep(prep_name).fit(X_train[fit_rows])
                Xf, Xv = prep.transform(X_train[fit_rows]), prep.transform(X_train[val_rows])
                model = None
                for c in Cs:
                    model = _fit_logistic(Xf, y_train[fit_rows], c, max_iter, model, solver, seed)
                    scores[(prep_name, c)].append(float(np.mean(model.predict(Xv) == y_train[val_rows])))
                    fitted[(prep_name, c)] = (model.coef_.copy(), model.intercept_.copy(), model.classes_)
        mean_scores = {key: float(np.mean(v)) for key, v in scores.items()}
        best_prep, best_c = max(mean_scores, key=mean_scores.get)  # dicts keep grid order: first best wins

    with timed(timings, "fit_s"):
        prep = FeaturePrep(best_prep).fit(X_train)
        # the preconditioned solver starts the refit where the chosen setting's selection fit ended
        start = fitted[(best_prep, best_c)] if solver == "preconditioned" else None
        model = _fit_logistic(prep.transform(X_train), y_train, best_c, max_iter, solver=solver, seed=seed,
                              start=start)
    with timed(timings, "predict_s"):
        pred = model.predict(prep.transform(X_test))

    classes = np.union1d(model.classes_, np.unique(y_test))
    return LinearProbeResult(
        accuracy=float(accuracy_score(y_test, pred)),
        balanced_accuracy=_balanced_accuracy(y_test, pred),
        macro_f1=float(f1_score(y_test, pred, average="macro", labels=classes, zero_division=0)),
        preprocessing=best_prep, C=best_c, classes=classes.tolist(),
        confusion_matrix=confusion_matrix(y_test, pred, labels=classes).tolist(),
        cv_scores={f"{p}/C={c:g}": s for (p, c), s in mean_scores.items()},
        selection=selection, n_train=int(y_train.size), n_test=int(y_test.size),
        converged=bool(np.all(np.asarray(model.n_iter_) < max_iter)), seed=int(seed), timings=timings)


# wrapped after the definition, not decorated: mutmut (benchmarks/mutation.py) leaves decorated functions out
linear_probe = small_data_single_thread(linear_probe)
