"""Mutation testing of the core (issue #15, item 2): do the tests catch the bugs that matter?

    python benchmarks/mutation.py                    # every group below (about an hour on 2 cores)
    python benchmarks/mutation.py --module store     # one group; the others keep their last results
    python benchmarks/mutation.py --only unchecked   # go on with the mutants an interrupted run left
    python benchmarks/mutation.py --only survivors   # rerun only the mutants that survived last time
    python benchmarks/mutation.py --report           # rewrite the result files from the last runs

mutmut (configured in setup.cfg, section ``[mutmut]``) copies ``cvae_features`` into ``mutants/``
(git-ignored) with every mutant of the modules named there, finds which tests call each function,
and runs, for each mutant, those tests (``-x``) with the mutant switched on: a failing test kills
it. This script runs mutmut on the functions listed in ``GROUPS`` (the store's commit protocol
and readers, extraction planning and resume, the probes' selection, draws and scores, the model's
loss and prior, joined stores, the Ray engine's logic that runs without Ray, the unlabelled commands'
checks, records and contact sheets, nearest neighbours and duplicates with their approximate index, model files
and their fingerprints, resolving what holds a model, the image cache and keyed noise, Kingma's M2 on feature
vectors, training-time input augmentation, the semi-supervised convolutional VAE conv-m2 and its labels file,
the mixture-prior family conv-vade with its prior and the 'prior' cluster method, the training loop (batches,
the labelled draw, the augmentation hand-off, steps, validation, the best epoch, checkpoints and resume), and
the probes' entry points: the linear and k-NN probes' selection, the few-label curve, the cluster probe, the
anomaly probes, and the grouping and outlier ranking of cvae cluster and cvae outliers; the featurizers: the
registry, the vae, raw and pca kinds, their batch calls and the streamed PCA fit, and the contact sheets: the
recorded source, the images read back, the grids and the page; the set-up around a training run: the process
group's collectives, the model families' registry, the plan, time estimate and run of the training extract does
when no model is given, and the priors' descriptions; the clustering code (UMAP + GMM, the clusterers' settings,
the cluster probe's hooks); extraction's entry point, options and helpers with the shard rule; the extension
points: the probe and few-label method registries, the training hooks and the run directory's files; how a
training run is set up: the data loaded, the configs checked and agreed on resume, the run dir's lock and claim,
the seeds, the split and the recorded config; the preconditioned logistic regression of the linear probe's
wide-feature path and its solver choice), then writes
``benchmarks/results/mutation.{md,json}``: per module the mutants generated, killed, survived
(including "no tests": no selected test calls the function), timed out, crashed (the test run
died: caught), skipped, and those judged equivalent (they change nothing observable: the reasons
are in ``benchmarks/mutation_equivalent.json``), and the score
``(killed + timeout + crashed) / (generated - equivalent - skipped)``.

Notes: the tests run from ``mutants/`` with ``PYTHONPATH=mutants`` so that tests which start
Python subprocesses (the kill tests) run the mutant too; the disk-full test (a real tmpfs, two
CLI runs: 10 s or more per mutant that reaches it) is deselected (``PYTEST_ADDOPTS``), in-process
tests of a failing disk stand in for it; mutmut leaves out functions
with decorators other than classmethod/staticmethod (properties, context managers, functions under
``torch.no_grad``) and ``raise`` statements (setup.cfg: their mutants change error words only). The
entry points that ``small_data_single_thread`` wraps (``linear_probe``, ``knn_probe``, ``fewshot_curve``,
``cluster_probe``, ``anomaly_scores``, ``anomaly_probe``, ``one_class_protocol``, ``group_rows``,
``find_outliers``) are wrapped after their definition (``f = small_data_single_thread(f)``) instead of
decorated, so they are mutated (group ``entry``). Tests write only into pytest's temporary folders, never
into the source tree.
Target: at least 95 % of the non-equivalent mutants killed.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as bc  # noqa: E402

TARGET = 0.95

# group -> {source file: [mangled function names as mutmut writes them]}
C = "\u01c1"  # mutmut's class separator: xǁClassǁmethod
GROUPS = {
    "store": {"cvae_features/store.py": [
        f"x{C}StoreWriter{C}write_batch", f"x{C}StoreWriter{C}replace_rows", f"x{C}StoreWriter{C}add_plan",
        f"x{C}StoreWriter{C}_reconcile", f"x{C}StoreWriter{C}_cut_back", f"x{C}StoreWriter{C}append_to",
        f"x{C}StoreWriter{C}__init__", f"x{C}StoreWriter{C}pending", f"x{C}StoreWriter{C}identity",
        f"x{C}StoreWriter{C}_ensure_identity", f"x{C}StoreWriter{C}_check_space", f"x{C}StoreWriter{C}close",
        f"x{C}StoreWriter{C}merge_label_names", "x__validate", "x__plan_length", "x__finish_replacements",
        "x__replace_strings", f"x{C}FeatureStore{C}__init__", f"x{C}FeatureStore{C}read_rows",
        f"x{C}FeatureStore{C}iter_rows"]},
    "extraction": {"cvae_features/extraction.py": [
        "x__pending_work", "x__rewrite_changed", "x__write_batches", "x_resolve_featurizer",
        "x__check_same_source", "x__read_existing", "x__open_writer"]},
    "probes": {
        "cvae_features/probes/_common.py": ["x_selection_splits", "x_stratified_split", "x_stratified_subsample",
                                            "x_supervised_inputs", "x__balanced_accuracy"],
        "cvae_features/probes/fewshot.py": ["x_draw_labelled"],
        "cvae_features/probes/cluster.py": ["x_cluster_accuracy"],
        "cvae_features/probes/anomaly.py": [f"x{C}AnomalyScorer{C}__init__", f"x{C}AnomalyScorer{C}fit",
                                            f"x{C}AnomalyScorer{C}score", "x__roc_points", "x_min_normal_rows"],
        "cvae_features/probes/linear.py": ["x__fit_logistic"],
        "cvae_features/probes/knn.py": ["x_vote", "x_nearest_neighbours"]},
    "model": {
        "cvae_features/model.py": [f"x{C}ConvVAE{C}_elbo", f"x{C}ConvVAE{C}loss", f"x{C}ConvVAE{C}forward",
                                   f"x{C}ConvVAE{C}reconstruction_nll", f"x{C}ConvVAE{C}encode",
                                   f"x{C}VAEOutput{C}terms", f"x{C}VAEOutput{C}per_sample_terms",
                                   f"x{C}VAEOutput{C}term_weights"],
        "cvae_features/priors.py": [f"x{C}StandardNormal{C}kl", f"x{C}StandardNormal{C}kl_per_dim",
                                    f"x{C}StandardNormal{C}log_prob", f"x{C}StandardNormal{C}sample"]},
    "join": {
        "cvae_features/join.py": ["x_join_stores", "x_expand_parts", "x_joined_parts", "x__part_info",
                                  "x__check_alike", "x__order_shards", "x__merged_labels", "x__mapped_labels",
                                  "x__check_unique_keys", "x__key_at", "x__joined_source", "x__copy"],
        "cvae_features/store.py": ["x_write_joined", "x__check_parts", "x__joined_mode", f"x{C}_Described{C}stamp",
                                   f"x{C}FeatureStore{C}plan_entries", "x__read_identity"],
        "cvae_features/extraction.py": ["x__extract_joined"]},
    # the Ray engine without Ray started: the address probe (against local socket servers), joining and leaving
    # Ray (a stand-in ray module), the pool and task sizes, an actor's table rows (called in-process) and the
    # driver's chunks in plan order (tests/test_ray_engine_units.py). Not mutated: RayEngine.iter_batches (it
    # builds and reads the Ray Data pipeline: it needs a real Ray, seconds to start; tests/test_ray_engine.py runs
    # it), import_ray (imports; its raise is left alone), _current_address (one Ray call), __enter__/__exit__
    # (calls only), _environ and _stderr_silenced (context managers: decorated, which mutmut leaves out).
    "ray": {"cvae_features/ray_engine.py": [
        "x_check_address", "x__grpc_answers", f"x{C}RayEngine{C}__init__", f"x{C}RayEngine{C}connect",
        f"x{C}RayEngine{C}close", f"x{C}RayEngine{C}n_actors", f"x{C}RayEngine{C}batches_per_task",
        "x__task_part", f"x{C}_ChunkEncoder{C}__init__", f"x{C}_ChunkEncoder{C}__call__", "x__columns", "x__spread",
        f"x{C}_InOrder{C}__init__", f"x{C}_InOrder{C}add", f"x{C}_InOrder{C}_span", f"x{C}_InOrder{C}check_complete",
        "x__batch", "x__actor_death", "x__env_address", "x__same_address"]},
    # the unlabelled commands' modules (cvae cluster, cvae outliers): k's checks and the silhouette per k, a
    # result's exemplars and JSON, the contact sheets of groups and of outliers, the store entry points (the
    # extras read, the sheets' text; tests/test_groups.py, tests/test_outliers.py, tests/test_cli_unlabelled.py).
    # group_rows and find_outliers (the relabelling by size, distances, exemplar marks, the rank combination, the
    # flag count and the nearest normal rows) are in the entry group; the dataclasses' fields are not mutated (no
    # code).
    "unlabelled": {
        "cvae_features/groups.py": [f"x{C}GroupsResult{C}exemplars", f"x{C}GroupsResult{C}to_dict", "x__check_k",
                                    "x__whole", "x__check_k_range", "x_silhouette_by_k", "x_group_sheets",
                                    "x_group_store"],
        "cvae_features/outliers.py": [f"x{C}OutliersResult{C}to_dict", "x__check_int", "x_outlier_sheets",
                                      "x_outlier_store"]},
    # similar images and near-duplicates (cvae neighbors, cvae duplicates): the exact top k merged over blocks, a
    # query's own row left out, the distances and tables, the duplicate pairs and their connected components,
    # exact or approximate by size, queries as keys or embedded image files, the JSON records; the index's
    # sidecar identity and when an index is stale, its lists, probes and build (tests/test_neighbors.py,
    # tests/test_index.py, real faiss). Not mutated: DuplicatesResult.n_groups and ApproximateIndex.n_lists
    # (properties: decorated, which mutmut leaves out), require_faiss (an import; its raise is left alone).
    "neighbors": {
        "cvae_features/neighbors.py": [
            "x__rows_per_block", "x__top_k", "x__array_blocks", "x__table", "x__check_k", "x_nearest_neighbors",
            f"x{C}_Components{C}__init__", f"x{C}_Components{C}add", f"x{C}_Components{C}labels",
            f"x{C}_Components{C}_forest", f"x{C}_Components{C}groups", "x__check_threshold", "x__exact_pairs",
            "x__groups_table", "x__first_member_distances", "x_find_duplicates", "x_choose_search",
            f"x{C}NeighborsResult{C}to_dict", f"x{C}DuplicatesResult{C}to_dict", "x__open", "x__search_method",
            "x__index", "x__query_featurizer", "x_embed_images", "x__resolve_queries", "x_store_neighbors",
            "x__approximate", "x_store_duplicates"],
        "cvae_features/index.py": [
            "x_index_paths", "x_store_identity", "x_n_lists", "x_normalize_rows", f"x{C}ApproximateIndex{C}__init__",
            f"x{C}ApproximateIndex{C}_probe", f"x{C}ApproximateIndex{C}search",
            f"x{C}ApproximateIndex{C}range_search", "x_build_index", "x__read_sidecar", "x_stale_reason",
            "x_open_index"]},
    # model files and what identifies them, resolving what holds a model, the image cache training reads, keyed
    # noise: a model file's fingerprint, writing and checks on reading (format, version, family, config, weights'
    # names, shapes and finiteness), torch files read safely, a run dir / model file / store told apart, the cache's
    # identity, build, resume, reads and fingerprint, SplitMix64 and Box-Muller (tests/test_model.py,
    # tests/test_model_hostile.py, tests/test_families.py, tests/test_cache.py, tests/test_noise.py). Not mutated:
    # ResolvedModel.label and ImageCache.fingerprint (properties: decorated, which mutmut leaves out).
    "files": {
        "cvae_features/modelfile.py": [
            "x_fingerprint_state", "x_model_fingerprint", "x_save_model", "x_model_from_state", "x_read_model_file",
            "x_check_state_dict", "x_first_non_finite", "x_read_torch_file", "x__first_line", "x__some"],
        "cvae_features/resolve.py": ["x_resolve_model", "x_load_model", "x__from_store", "x__as_tensors",
                                     "x__run_config"],
        "cvae_features/data/cache.py": [
            "x_cache_identity", f"x{C}CachedImages{C}__init__", f"x{C}CachedImages{C}__len__",
            f"x{C}CachedImages{C}__getstate__", f"x{C}CachedImages{C}__del__", f"x{C}CachedImages{C}numel",
            f"x{C}CachedImages{C}_read", f"x{C}CachedImages{C}index_select", f"x{C}CachedImages{C}__getitem__",
            f"x{C}CachedImages{C}fingerprint", f"x{C}ImageCache{C}__init__", "x_build_cache", "x_open_cache",
            "x_remove_cache", "x__read_meta", "x__write_meta", "x__read_skips", "x__clear"],
        "cvae_features/noise.py": ["x__lsr", "x__mix", "x_keyed_normal"]},
    # Kingma's M2 on feature vectors (the fewshot probe's m2 method): the labelled and unlabelled terms and the
    # objective against independent formulas, the networks' widths, the classifier's inputs and outputs, the warm-up,
    # the projection on the principal axes, the seeded fit and the settings' checks (tests/test_semisup.py and the
    # m2 tests of tests/test_probes.py). Nothing in semisup.py is decorated but the M2Config dataclass itself.
    "semisup": {"cvae_features/semisup.py": [
        f"x{C}M2Config{C}__post_init__", f"x{C}M2Config{C}to_dict", f"x{C}M2Net{C}__init__", f"x{C}M2Net{C}logits",
        f"x{C}M2Net{C}neg_elbo", f"x{C}M2Net{C}unlabelled_loss", f"x{C}M2Net{C}objective",
        f"x{C}M2Classifier{C}transform", f"x{C}M2Classifier{C}predict_proba", f"x{C}M2Classifier{C}predict",
        "x_warmup_weight", "x__projection", "x_fit_m2"]},
    # training-time input augmentation: the setting's checks, the spec string parsed and written canonically, the
    # keyed draws mapped to (0, 1), the erased patch, the pixel noise and the one resampling of shift, crop and flip
    # (tests/test_augment.py). Not mutated: Augment.active and Augment.geometric (properties: decorated).
    "augment": {"cvae_features/augment.py": [
        f"x{C}Augment{C}__post_init__", f"x{C}Augment{C}parse", f"x{C}Augment{C}spec", f"x{C}Augment{C}__call__",
        f"x{C}Augment{C}_warp", "x__uniform", "x_check_augment", "x_resolve_augment"]},
    # the semi-supervised convolutional VAE (family conv-m2) and the labels file that gives it labels: the settings'
    # checks, the heads' widths, q(z | x, y), the class-conditional decoder, the embedding as the class mixture's
    # moments, the labelled and unlabelled terms and their weights, keyed noise shared by every class; the key,label
    # CSV read and the labels attached by key (tests/test_m2vae.py). Not mutated: ConvM2.class_probabilities and
    # ConvM2.scores (under torch.no_grad: decorated).
    "m2vae": {
        "cvae_features/m2vae.py": [
            f"x{C}M2VAEConfig{C}__post_init__", f"x{C}M2Output{C}terms", f"x{C}M2Output{C}per_sample_terms",
            f"x{C}M2Output{C}term_weights", f"x{C}ConvM2{C}__init__", f"x{C}ConvM2{C}_posterior",
            f"x{C}ConvM2{C}decode", f"x{C}ConvM2{C}class_logits", f"x{C}ConvM2{C}encode",
            f"x{C}ConvM2{C}_class_posteriors", f"x{C}ConvM2{C}_mixture", f"x{C}ConvM2{C}loss", f"x{C}ConvM2{C}_elbo",
            f"x{C}ConvM2{C}forward"],
        "cvae_features/data/labelfile.py": ["x_read_label_file", "x_with_labels"]},
    # the mixture-prior family conv-vade: the settings' checks, the GMM fit (k-means++, Lloyd, EM), the model's
    # buffers and the distributed refusal, the loss's keyed noise and step counting, the mixture prior's parts,
    # KL bound, split over dimensions, responsibilities and log density, and the 'prior' cluster method (the rows
    # assigned, the store's model resolved; tests/test_vade.py, tests/test_priors.py). Not mutated:
    # ConvVaDE.pretraining and loss_prior, MixturePrior.mean and stddev (properties), ConvVaDE._count_step (the
    # pretraining schedule: the ring buffer of codes, the fit after the last step), fit_prior,
    # cluster_probabilities and cluster, MixturePrior.assign and sample (under torch.no_grad: decorated, which
    # mutmut leaves out; tests/test_vade.py checks them by value). Not listed: the cluster probe's hooks in probes/_builtin.py
    # that call _store_prior (_check_cluster, _run_cluster: the probe's options and notes, not the prior's logic).
    "vade": {
        "cvae_features/vade.py": [
            f"x{C}VaDEConfig{C}__post_init__", "x_fit_diagonal_gmm", f"x{C}ConvVaDE{C}__init__",
            f"x{C}ConvVaDE{C}loss", f"x{C}ConvVaDE{C}forward", f"x{C}ConvVaDE{C}_vade_elbo"],
        "cvae_features/priors.py": [
            f"x{C}MixturePrior{C}__init__", f"x{C}MixturePrior{C}extra_repr", f"x{C}MixturePrior{C}log_weights",
            f"x{C}MixturePrior{C}component_logvars",
            f"x{C}MixturePrior{C}set_components", f"x{C}MixturePrior{C}component_kl_per_dim",
            f"x{C}MixturePrior{C}_log_joint", f"x{C}MixturePrior{C}kl", f"x{C}MixturePrior{C}kl_per_dim",
            f"x{C}MixturePrior{C}responsibilities", f"x{C}MixturePrior{C}log_prob"],
        "cvae_features/probes/cluster.py": ["x_prior_assignments"],
        "cvae_features/probes/_builtin.py": ["x__store_prior"]},
    # the training loop (cvae_features/_train_loop.py): the loop's set-up (labels, the labelled rows, batches per
    # epoch, optimizer, schedule, the augmentation's check), restoring a checkpoint, the epochs with the validation
    # loss, the best epoch, early stopping and the state checkpointed, an epoch's batches (the seeded order, the
    # labelled draw, the augmentation hand-off, beta's warm-up, the optimizer steps, the NaN guard, the size-weighted
    # means), the NaN message, labels for the batches, the progress bar's text and the state moved to the CPU
    # (tests/test_train.py, tests/test_train_seams.py). Not mutated: Loop._evaluate (under torch.no_grad:
    # decorated, which mutmut leaves out; the validation loss is checked by value in tests/test_train_seams.py).
    "loop": {"cvae_features/_train_loop.py": [
        f"x{C}Loop{C}__init__", f"x{C}Loop{C}restore", f"x{C}Loop{C}run", f"x{C}Loop{C}_train_epoch",
        f"x{C}Loop{C}_state", f"x{C}Loop{C}_nan_message", "x__labels_for", "x__postfix", "x__to_cpu"]},
    # the entry points wrapped by small_data_single_thread (after their definition, not as a decorator, which
    # mutmut would leave out): the linear probe's selection loop and refit, the k-NN probe's selection and its
    # test scores, the few-label curve's draws, methods and records, the cluster probe's methods and scores, the
    # anomaly scores, the anomaly probe's held-out threshold and the one-class protocol; group_rows and
    # find_outliers behind cvae cluster and cvae outliers. A group of their own so that the probes and
    # unlabelled groups, which list the helpers of the same files, keep their runs.
    "entry": {
        "cvae_features/probes/linear.py": ["x_linear_probe"],
        "cvae_features/probes/knn.py": ["x_knn_probe"],
        "cvae_features/probes/fewshot.py": ["x_fewshot_curve"],
        "cvae_features/probes/cluster.py": ["x_cluster_probe"],
        "cvae_features/probes/anomaly.py": ["x_anomaly_scores", "x_anomaly_probe", "x_one_class_protocol"],
        "cvae_features/groups.py": ["x_group_rows"],
        "cvae_features/outliers.py": ["x_find_outliers"]},
    # the preconditioned logistic regression of the linear probe's wide-feature path (probes/wide_logistic.py:
    # the sketch, the preconditioner's powers, the objective and gradient, the fit with its warm start, kept sketch,
    # mixed precision and stopping rule, L-BFGS with its callback, the scores) and the solver chosen by width
    # (linear.py's resolve_solver). A group of its own: the probes and entry groups keep their runs.
    "wide": {
        "cvae_features/probes/wide_logistic.py": [
            f"x{C}LowRankSketch{C}__init__", f"x{C}_Preconditioner{C}__init__", f"x{C}_Preconditioner{C}power",
            f"x{C}PreconditionedLogistic{C}__init__", f"x{C}PreconditionedLogistic{C}set_params",
            f"x{C}PreconditionedLogistic{C}_logits", f"x{C}PreconditionedLogistic{C}_loss_grad",
            f"x{C}PreconditionedLogistic{C}fit", f"x{C}PreconditionedLogistic{C}_lbfgs",
            f"x{C}PreconditionedLogistic{C}decision_function", f"x{C}PreconditionedLogistic{C}predict"],
        "cvae_features/probes/linear.py": ["x_resolve_solver"]},
    # the featurizers and the contact sheets: the registry (register, unregister, the kinds in order), how each
    # built-in kind is obtained (fitted or trained with the extraction's options, from a reference model or store,
    # from the store it wrote) and checked against dim, its store fields, recorded resize and state, the batch
    # calls (the VAE's eval copy, mu, log-variance and scores; pixels in [0, 1]; the PCA projection in float64), the
    # PCA fingerprint and the streamed PCA fit (exact, and incremental in pieces of at least dim rows); the recorded
    # source parsed back into specs, the images read back by key with why a key is blank, the grids' layout and the
    # sheets' page (tests/test_featurizers.py, tests/test_sheets.py). Not mutated: Featurizer.fingerprint,
    # VAEFeaturizer.fingerprint and PCAFeaturizer.fingerprint (properties: decorated, which mutmut leaves out; the
    # PCA one calls pca_fingerprint, which is mutated); the dataclasses Sheet and SheetsResult have no code but
    # SheetsResult.to_dict. Listed but without mutants: the base class's fit, from_reference, from_store and
    # batch_fn (a raise only), the state() of the base and VAE classes (return {}), get_featurizer (a lookup and a
    # raise) and RawFeaturizer.batch_fn (return _RawBatch()).
    "featurizers": {
        "cvae_features/featurizers.py": [
            f"x{C}Featurizer{C}__init__", f"x{C}Featurizer{C}fit", f"x{C}Featurizer{C}from_reference",
            f"x{C}Featurizer{C}from_store", f"x{C}Featurizer{C}state", f"x{C}Featurizer{C}store_fields",
            f"x{C}Featurizer{C}keep_resize", f"x{C}Featurizer{C}batch_fn", "x_register_featurizer",
            "x_unregister_featurizer", "x_featurizer_kinds", "x_get_featurizer", f"x{C}VAEFeaturizer{C}__init__",
            f"x{C}VAEFeaturizer{C}fit", f"x{C}VAEFeaturizer{C}from_reference", f"x{C}VAEFeaturizer{C}from_store",
            f"x{C}VAEFeaturizer{C}state", f"x{C}VAEFeaturizer{C}store_fields", f"x{C}VAEFeaturizer{C}batch_fn",
            f"x{C}_VAEBatch{C}__init__", f"x{C}_VAEBatch{C}__call__", "x_pixels", "x__reference_store",
            f"x{C}RawFeaturizer{C}__init__", f"x{C}RawFeaturizer{C}_checked", f"x{C}RawFeaturizer{C}fit",
            f"x{C}RawFeaturizer{C}from_reference", f"x{C}RawFeaturizer{C}from_store",
            f"x{C}RawFeaturizer{C}keep_resize", f"x{C}RawFeaturizer{C}batch_fn", f"x{C}_RawBatch{C}__call__",
            "x_pca_fingerprint", f"x{C}PCAFeaturizer{C}__init__", f"x{C}PCAFeaturizer{C}_checked",
            f"x{C}PCAFeaturizer{C}fit", f"x{C}PCAFeaturizer{C}from_reference", f"x{C}PCAFeaturizer{C}from_store",
            f"x{C}PCAFeaturizer{C}_basis", f"x{C}PCAFeaturizer{C}keep_resize", f"x{C}PCAFeaturizer{C}state",
            f"x{C}PCAFeaturizer{C}batch_fn", f"x{C}_PCABatch{C}__init__", f"x{C}_PCABatch{C}__call__", "x_fit_pca"],
        "cvae_features/sheets.py": [
            "x_find_key", "x_recorded_specs", f"x{C}StoreImages{C}__init__", f"x{C}StoreImages{C}open",
            f"x{C}StoreImages{C}get", "x_pad_row", "x_save_grid", f"x{C}SheetsResult{C}to_dict", "x_write_sheets"]},
    # the set-up around a training run: the process group (who this process is, the collectives the trainer
    # needs, joining and leaving it, a lost process told from other errors, each process's GPU, the module DDP
    # wraps; tests/test_distributed_units.py: two real gloo processes, this one and one it starts), the model
    # families' registry (tests/test_families.py), the plan extract trains by when no model is given, its time
    # estimate and run (tests/test_extract.py) and the priors' descriptions (tests/test_priors.py). Not mutated:
    # Dist.active and Dist.main (properties: decorated, which mutmut leaves out; every collective's test runs
    # through them).
    "setup": {
        "cvae_features/_distributed.py": [
            f"x{C}Dist{C}barrier", f"x{C}Dist{C}all_sum", f"x{C}Dist{C}on_main", f"x{C}Dist{C}check_same",
            f"x{C}Dist{C}close", "x_from_env", "x_lost_contact", "x_local_device", f"x{C}LossModule{C}__init__",
            f"x{C}LossModule{C}forward"],
        "cvae_features/families.py": [
            f"x{C}ModelFamily{C}load", "x_register_model_family", "x_unregister_model_family", "x_model_families",
            "x_get_model_family", "x_model_class", "x_create_model", "x_arch_of", "x_is_model"],
        "cvae_features/autotrain.py": [
            f"x{C}AutoTrainPlan{C}to_dict", "x_auto_run_dir", "x_plan_auto_training", "x__estimate_training_seconds",
            "x_train_for_extraction"],
        "cvae_features/priors.py": [f"x{C}StandardNormal{C}describe", f"x{C}MixturePrior{C}describe"]},
    # the clustering code the probes and vade groups do not list: umap-learn imported or refused in one line, the
    # methods checked, the N2D recipe (UMAP's settings, the full-covariance GMM on the embedding, predict of the
    # fitted rows or of new ones), the clusterer fitted per method, the diagonal GMM's variance floor, a result's
    # summary; the cluster probe's registry hooks (the methods asked for, the 'prior' method's check, the test
    # labels or 10 clusters and the note, the DataTooSmall reworded). cluster_accuracy is in the probes group,
    # prior_assignments and _store_prior in the vade group, cluster_probe in the entry group.
    "cluster": {
        "cvae_features/probes/cluster.py": ["x_import_umap", "x_check_methods", f"x{C}UmapGmm{C}__init__",
                                            f"x{C}UmapGmm{C}fit", f"x{C}UmapGmm{C}predict", "x_fit_clusters",
                                            "x_gmm_reg_covar", f"x{C}ClusterProbeResult{C}summary"],
        "cvae_features/probes/_builtin.py": ["x__cluster_methods", "x__check_cluster", "x__run_cluster"]},
    # extraction's entry point and the steps and helpers the extraction group does not list: the options merged
    # and checked (batch size, dim, max_bad, the exclusive modes, the shard, the engine), the target checked, the
    # shard's keys and ignored files, the walk's skips recorded, labels mapped to the store's, the non-finite
    # check, the rows' batches from the local workers, the ray engine made, the space a rerun needs, the feature
    # kind resolved, the records' dicts; a key's shard and a shard's rows (cvae_features/data/sources.py). Not
    # listed: _extract_joined (join group), ExtractOptions.extras (a property: decorated).
    "shards": {
        "cvae_features/extraction.py": [
            "x_extract", "x__options", "x__check_target", "x__empty_batch", "x__record_ignored", "x__store_labels",
            "x__check_finite", "x__iter_rows", "x__ray_engine", "x__check_engine", "x__parse_shard",
            "x__same_shard", "x__file_exists", "x__bytes_needed", "x__resolve_kind",
            f"x{C}ExtractOptions{C}__post_init__", f"x{C}ExtractProgress{C}to_dict", f"x{C}ExtractResult{C}to_dict"],
        "cvae_features/data/sources.py": ["x_shard_of_key", "x_shard_rows", "x_file_identity"]},
    # the extension points of the seams redesign: the probe and few-label method registries (names and one-line
    # descriptions checked, register as a call or a decorator with every setting passed through, replace when asked,
    # unregister, look up, list in order or the default ones, the spec of a record), the training hooks (the callback
    # hook, the run directory's writes at the end of an epoch, the reconstructions of the best model) and the run
    # directory's files (written through a temporary name, the checkpoint written and checked on reading, the
    # history, the skipped files, the reconstructions page; tests/test_registry.py, tests/test_train_seams.py,
    # tests/test_train.py, tests/test_model_hostile.py). TrainHook's three methods are listed but have no mutants
    # (pass); the dataclasses ProbeContext, ProbeSpec and FewShotMethod have no other code.
    "seams": {
        "cvae_features/probes/registry.py": [
            f"x{C}ProbeContext{C}note", f"x{C}ProbeSpec{C}__post_init__", "x__check_entry", "x_register_probe",
            "x_unregister_probe", "x_get_probe", "x_probe_names", "x_probe_for_record", "x_register_fewshot_method",
            "x_unregister_fewshot_method", "x_get_fewshot_method", "x_fewshot_methods"],
        "cvae_features/_train_hooks.py": [
            f"x{C}TrainHook{C}on_batch_end", f"x{C}TrainHook{C}on_epoch_end", f"x{C}TrainHook{C}on_train_end",
            f"x{C}CallbackHook{C}__init__", f"x{C}CallbackHook{C}on_batch_end", f"x{C}RunDirWriter{C}__init__",
            f"x{C}RunDirWriter{C}on_epoch_end", f"x{C}RunDirWriter{C}_write_reconstructions"],
        "cvae_features/_rundir.py": [
            "x__replace_from_tmp", "x_write_json", "x_save_checkpoint", "x_load_checkpoint", "x_write_history",
            "x_write_skipped", "x_save_reconstructions"]},
    # how a training run is set up (cvae_features/_train_setup.py, cvae_features/training.py; the loop itself is the
    # loop group): the data loaded (in-memory arrays checked, the seeded subset, files decoded or cached, the labels,
    # the classes of a semi-supervised family, the fingerprint), the model fields the caller chose, the configs and
    # preprocess agreed on resume, what a run dir holds, its lock, its claim and the advice after an interrupt, the
    # derived seeds; TrainConfig's checks and record, the run's checks, the resume, the split and the recorded
    # config, the result and the cache dropped (tests/test_train_setup.py, tests/test_train.py,
    # tests/test_train_seams.py). Not mutated: TrainResult.best_val_loss and images_per_s (properties: decorated).
    "training": {
        "cvae_features/_train_setup.py": [
            "x_load_data", "x__as_image_tensor", "x__subset_rows", "x_model_overrides", "x_agree",
            "x_agree_preprocess", "x_existing_run", "x_lock_run_dir", "x_claim_run_dir", "x_interrupted_advice",
            "x_derive_seed"],
        "cvae_features/training.py": [
            f"x{C}TrainConfig{C}__post_init__", f"x{C}TrainConfig{C}to_dict", f"x{C}TrainConfig{C}from_dict",
            f"x{C}TrainConfig{C}from_saved", f"x{C}TrainResult{C}to_dict", "x_train", "x__train", "x__train_in",
            "x__finish", "x__drop_cache", "x__result", "x__as_train_config"]},
}

# Surviving mutants that change nothing observable: mutant name -> why (one line).
EQUIVALENT: dict = {}
_EQ_FILE = Path(__file__).resolve().with_name("mutation_equivalent.json")
if _EQ_FILE.exists():
    EQUIVALENT.update(json.loads(_EQ_FILE.read_text()))

# The tests written for the survivors of each function, by its mangled name, or by its full name where two modules
# have a function of that name (tests/test_mutation_survivors.py; for the join group
# tests/test_join.py; for the ray group tests/test_ray_engine_units.py; for the unlabelled group tests/test_groups.py,
# tests/test_outliers.py and tests/test_cli_unlabelled.py; for the neighbors group tests/test_neighbors.py and
# tests/test_index.py; for the files group tests/test_model_hostile.py, tests/test_families.py, tests/test_cache.py
# and tests/test_noise.py; for the semisup group tests/test_semisup.py; for the augment group tests/test_augment.py;
# for the m2vae group tests/test_m2vae.py; for the vade group tests/test_vade.py and tests/test_priors.py; for the
# loop group tests/test_train_seams.py; for the featurizers group tests/test_featurizers.py and tests/test_sheets.py;
# for the setup group tests/test_distributed_units.py, tests/test_families.py, tests/test_extract.py and
# tests/test_priors.py; for the cluster group tests/test_probes.py and tests/test_registry.py; for the shards group
# tests/test_shards.py and tests/test_ray_engine_units.py; for the seams group tests/test_registry.py,
# tests/test_train_seams.py and tests/test_model_hostile.py; for the training group tests/test_train_setup.py;
# for the wide group tests/test_wide_logistic.py).
NEW_TESTS = {
    f"x{C}FeatureStore{C}iter_rows": ["test_iter_rows_by_one_and_by_the_default_65536"],
    f"x{C}FeatureStore{C}read_rows": ["test_read_rows_clips_to_the_committed_rows"],
    f"x{C}FeatureStore{C}__init__": ["test_damaged_root_attributes_are_refused_naming_the_file",
                                      "test_a_mislabelled_features_dataset_is_refused_naming_the_file"],
    f"x{C}StoreWriter{C}_cut_back": ["test_a_batch_failing_at_its_last_dataset_is_cut_back_to_the_committed_counts",
                                     "test_a_full_disk_during_a_batch_is_store_no_space_error"],
    f"x{C}StoreWriter{C}write_batch": ["test_a_batch_failing_at_its_last_dataset_is_cut_back_to_the_committed_counts",
                                       "test_a_batch_whose_commit_or_status_write_fails_refuses_further_writes"],
    f"x{C}StoreWriter{C}replace_rows": [
        "test_replace_rows_of_several_entries_given_out_of_order_with_extras_and_identity",
        "test_a_failed_replace_refuses_further_writes"],
    f"x{C}StoreWriter{C}add_plan": ["test_add_plan_records_the_given_identity_or_minus_one"],
    f"x{C}StoreWriter{C}identity": ["test_add_plan_records_the_given_identity_or_minus_one",
                                    "test_identity_of_a_store_written_before_identities_were_recorded_is_minus_one"],
    f"x{C}StoreWriter{C}_ensure_identity": [
        "test_identity_of_a_store_written_before_identities_were_recorded_is_minus_one"],
    f"x{C}StoreWriter{C}_check_space": [
        "test_the_space_check_asks_for_the_batch_one_chunk_per_dataset_and_one_mib"],
    f"x{C}StoreWriter{C}_reconcile": [
        "test_reopening_recomputes_a_lost_status_and_cuts_a_plan_extension_cut_short",
        "test_reopening_a_store_without_n_plan_records_it",
        "test_identity_of_a_store_written_before_identities_were_recorded_is_minus_one"],
    f"x{C}StoreWriter{C}append_to": ["test_a_store_not_closed_cleanly_gets_fresh_string_datasets",
                                     "test_reopening_a_damaged_store_names_the_file"],
    f"x{C}StoreWriter{C}close": [
        "test_closing_stamps_the_update_time",
        "test_closing_a_store_the_disk_refuses_to_finish_does_not_raise_but_a_plain_close_error_does"],
    f"x{C}StoreWriter{C}merge_label_names": ["test_add_plan_records_the_given_identity_or_minus_one"],
    "x__finish_replacements": ["test_replacements_cut_short_are_finished_or_dropped_in_every_group"],
    "x__plan_length": ["test_a_first_plan_extension_cut_short_leaves_an_empty_plan"],
    "x__check_same_source": ["test_resume_refuses_another_source_but_not_one_that_cannot_name_its_origin"],
    "x__open_writer": ["test_a_store_records_its_source_and_carries_weights_as_asked"],
    "x__pending_work": ["test_update_tells_changed_files_by_size_or_mtime_and_tracks_files_it_adds",
                        "test_update_of_a_store_without_file_identities_rewrites_nothing",
                        "test_resume_with_part_of_the_source_names_a_pending_file_it_lacks",
                        "test_more_files_removed_before_extraction_than_are_listed_are_all_counted",
                        "test_a_resume_lists_new_walk_skips_and_files_removed_before_extraction_together"],
    "x__rewrite_changed": ["test_update_shows_the_rewrite_progress_only_when_asked",
                           "test_update_tells_changed_files_by_size_or_mtime_and_tracks_files_it_adds",
                           "test_update_rewrites_the_scores_of_a_changed_file",
                           "test_non_finite_features_of_a_changed_file_name_it",
                           "test_with_an_accelerator_the_features_are_computed_here_and_equal",
                           "test_an_update_lists_new_walk_skips_and_changed_files_that_no_longer_decode_together"],
    "x__write_batches": ["test_update_shows_the_rewrite_progress_only_when_asked",
                         "test_max_bad_allows_that_many_undecodable_files_and_names_the_first_beyond",
                         "test_the_progress_callback_gets_rows_skips_and_total",
                         "test_with_an_accelerator_the_features_are_computed_here_and_equal"],
    "x_file_identity": ["test_file_identity_goes_on_past_a_file_that_cannot_be_stated",
                        "test_a_store_records_its_source_and_carries_weights_as_asked"],
    "x_resolve_featurizer": ["test_a_ready_featurizer_with_features_of_its_kind_and_a_reference_gets_the_source"],
    "x_cluster_accuracy": ["test_cluster_accuracy_of_one_row_and_of_none"],
    "x_vote": ["test_knn_vote_weights_and_ties"],
    "x_nearest_neighbours": ["test_nearest_neighbours_returns_k_of_them"],
    "x_min_normal_rows": ["test_min_normal_rows_mirrors_the_held_out_split"],
    "x__roc_points": ["test_roc_points_keep_the_ends_round_to_five_digits_and_thin_to_200"],
    f"x{C}AnomalyScorer{C}__init__": ["test_anomaly_scorer_defaults_and_option_names_in_errors"],
    f"x{C}AnomalyScorer{C}fit": ["test_anomaly_scores_equal_scikit_learn_computed_directly",
                                 "test_anomaly_scorer_checks_only_the_scores_it_computes",
                                 "test_anomaly_scorer_names_the_normal_rows_in_errors"],
    f"x{C}AnomalyScorer{C}score": ["test_anomaly_scorer_checks_only_the_scores_it_computes"],
    "x_draw_labelled": ["test_anomaly_scorer_defaults_and_option_names_in_errors"],
    "x_selection_splits": ["test_selection_splits_record_how_they_were_made_and_are_seeded"],
    "x_stratified_subsample": ["test_selection_splits_record_how_they_were_made_and_are_seeded"],
    "x_stratified_split": ["test_stratified_split_keeps_a_row_of_every_class_and_one_test_row_is_enough"],
    "x_supervised_inputs": ["test_supervised_inputs_keep_known_labels_and_name_bad_inputs",
                            "test_stratified_split_keeps_a_row_of_every_class_and_one_test_row_is_enough"],
    "x__balanced_accuracy": ["test_balanced_accuracy_hides_only_the_absent_class_warning"],
    "x__fit_logistic": ["test_logistic_fits_warm_start_with_the_given_c_and_iterations"],
    f"x{C}ConvVAE{C}_elbo": ["test_the_loss_is_recon_plus_beta_kl_with_z_sampled_only_in_training"],
    f"x{C}ConvVAE{C}reconstruction_nll": ["test_the_reconstruction_nll_is_the_summed_pixel_likelihood"],
    f"x{C}StandardNormal{C}sample": ["test_the_prior_terms_equal_torch_distributions"],
    # the join group (tests/test_join.py)
    "x__extract_joined": ["test_update_and_resume_a_joined_store_through_its_shards",
                          "test_a_joined_store_of_one_shard_and_a_clock_that_does_not_move"],
    "x_join_stores": ["test_joins_of_vae_shards_keep_the_model_weights_extras_compression_and_plan_identity",
                      "test_a_virtual_join_is_laid_out_as_an_ordinary_store",
                      "test_virtual_join_reads_as_the_whole_extraction",
                      "test_folders_of_parts_leave_out_the_output_and_files_that_are_not_stores",
                      "test_a_store_of_an_older_writer_joins_alone_and_is_checked_as_it_was_stamped",
                      "test_a_copy_replaces_the_output_only_when_asked_and_its_errors_come_through"],
    "x_expand_parts": ["test_folders_of_parts_leave_out_the_output_and_files_that_are_not_stores"],
    "x_joined_parts": ["test_folders_of_parts_leave_out_the_output_and_files_that_are_not_stores"],
    "x__part_info": ["test_a_store_of_an_older_writer_joins_alone_and_is_checked_as_it_was_stamped"],
    "x__check_alike": ["test_parts_that_do_not_belong_together_are_named_in_one_line"],
    "x__order_shards": ["test_parts_that_do_not_belong_together_are_named_in_one_line", "test_what_cannot_be_joined"],
    "x__mapped_labels": ["test_labels_of_parts_naming_other_classes_or_none"],
    "x__check_unique_keys": ["test_a_key_in_two_parts_is_found_wherever_it_is_and_both_files_named",
                             "test_keys_of_equal_hash_are_told_apart_by_the_keys_themselves"],
    "x__key_at": ["test_a_key_in_two_parts_is_found_wherever_it_is_and_both_files_named"],
    "x__joined_source": ["test_the_source_of_a_joined_store_names_its_parts",
                         "test_a_store_of_an_older_writer_joins_alone_and_is_checked_as_it_was_stamped"],
    "x__copy": ["test_joins_of_vae_shards_keep_the_model_weights_extras_compression_and_plan_identity",
                "test_a_copy_replaces_the_output_only_when_asked_and_its_errors_come_through",
                "test_labels_of_parts_naming_other_classes_or_none",
                "test_a_store_of_an_older_writer_joins_alone_and_is_checked_as_it_was_stamped"],
    "x_write_joined": ["test_a_virtual_join_is_laid_out_as_an_ordinary_store",
                       "test_write_joined_sorts_json_keys_and_writes_int64_labels_and_the_state_as_the_writer",
                       "test_labels_of_parts_naming_other_classes_or_none",
                       "test_joins_of_vae_shards_keep_the_model_weights_extras_compression_and_plan_identity",
                       "test_a_store_of_an_older_writer_joins_alone_and_is_checked_as_it_was_stamped"],
    "x__check_parts": ["test_a_missing_or_replaced_part_is_refused_never_read_as_nan",
                       "test_opening_a_joined_store_opens_only_the_parts_touched_since",
                       "test_a_store_of_an_older_writer_joins_alone_and_is_checked_as_it_was_stamped"],
    f"x{C}_Described{C}stamp": ["test_a_store_of_an_older_writer_joins_alone_and_is_checked_as_it_was_stamped"],
    f"x{C}FeatureStore{C}plan_entries": [
        "test_plan_entries_read_the_committed_plan_and_name_a_damaged_one",
        "test_joins_of_vae_shards_keep_the_model_weights_extras_compression_and_plan_identity"],
    "x__validate": ["test_damaged_root_attributes_are_refused_naming_the_file",
                    "test_datasets_shorter_than_their_count_or_of_another_width_are_refused",
                    "test_more_rows_and_skips_than_planned_entries_are_refused",
                    "test_the_smallest_valid_preprocess_size_is_one", "test_a_feature_kind_in_capitals_is_valid"],
    # the ray group (tests/test_ray_engine_units.py)
    "x__actor_death": ["test_actor_death_is_one_line_naming_its_last_cause"],
    "x__grpc_answers": ["test_a_server_that_waits_for_its_settings_to_be_acknowledged_gets_it",
                        "test_padded_and_prioritised_headers_are_read_past",
                        "test_a_grpc_answer_with_status_200_is_a_grpc_server_and_its_settings_are_acknowledged_once",
                        "test_a_host_that_never_takes_the_connection_times_out_within_the_timeout"],
    "x__same_address": ["test_same_address_resolves_host_names_and_compares_ports"],
    "x_check_address": ["test_the_probe_is_given_the_host_without_brackets_the_port_and_the_timeout"],
    f"x{C}RayEngine{C}__init__": ["test_a_local_ray_is_started_once_quietly_and_stopped_on_close"],
    f"x{C}_ChunkEncoder{C}__call__": ["test_an_actor_asks_for_batches_of_the_given_size_also_above_the_default_256"],
    # the unlabelled group (tests/test_groups.py, tests/test_outliers.py, tests/test_cli_unlabelled.py)
    "x__check_k": ["test_k_and_k_range_checks_at_their_boundaries"],
    "x__check_k_range": ["test_k_and_k_range_checks_at_their_boundaries"],
    "x_silhouette_by_k": ["test_silhouette_by_k_passes_its_options_and_is_none_for_one_group_or_one_row_per_group"],
    f"x{C}GroupsResult{C}to_dict": ["test_exemplars_closest_first_ties_in_row_order_and_the_json_record"],
    "x_group_sheets": [
        "test_group_sheets_exemplars_then_a_seeded_sample_in_rows_of_eight_and_no_sheet_for_an_empty_group",
        "test_group_sheets_keep_exemplars_of_equal_distance_in_row_order"],
    "x_group_store": ["test_group_store_passes_its_options_and_writes_the_sheets_page",
                      "test_the_store_entry_points_hand_source_and_data_dir_to_the_images_and_name_the_store_in_errors"],
    "x__check_int": ["test_check_int_refuses_bools_floats_and_values_below_the_minimum"],
    f"x{C}OutliersResult{C}to_dict": ["test_outliers_json_record_lists_the_top_rows_with_their_scores_and_neighbours"],
    "x_outlier_sheets": ["test_outlier_sheets_pages_of_25_rows_each_the_image_then_its_nearest_normal_ones"],
    "x_outlier_store": [
        "test_outlier_store_scores_the_stores_extras_passes_its_options_and_writes_the_sheets_page",
        "test_the_store_entry_points_hand_source_and_data_dir_to_the_images_and_name_the_store_in_errors"],
    # the neighbors group (tests/test_neighbors.py, tests/test_index.py)
    "x__rows_per_block": ["test_block_sizes_checks_and_the_search_choice_at_their_boundaries"],
    "x_choose_search": ["test_block_sizes_checks_and_the_search_choice_at_their_boundaries"],
    "cvae_features.neighbors.x__check_k": ["test_block_sizes_checks_and_the_search_choice_at_their_boundaries"],
    "x__check_threshold": ["test_block_sizes_checks_and_the_search_choice_at_their_boundaries"],
    "x_nearest_neighbors": ["test_nearest_neighbors_defaults_names_ties_and_the_clamp_of_k"],
    "x__top_k": ["test_top_k_across_blocks_at_their_boundaries_and_for_k_of_one"],
    "x__array_blocks": ["test_top_k_across_blocks_at_their_boundaries_and_for_k_of_one"],
    "x__table": ["test_distances_stay_within_0_and_2_where_float32_rounding_leaves_them"],
    "x__exact_pairs": ["test_duplicate_pairs_are_found_once_across_blocks"],
    "x__first_member_distances": ["test_duplicate_groups_ordered_by_their_first_row_with_distances_to_it"],
    "x__groups_table": ["test_duplicate_groups_ordered_by_their_first_row_with_distances_to_it",
                        "test_distances_stay_within_0_and_2_where_float32_rounding_leaves_them"],
    "x_find_duplicates": ["test_duplicate_groups_ordered_by_their_first_row_with_distances_to_it"],
    f"x{C}_Components{C}__init__": ["test_components_compact_their_edges_past_four_per_row_plus_the_slack"],
    f"x{C}_Components{C}add": ["test_components_compact_their_edges_past_four_per_row_plus_the_slack"],
    f"x{C}_Components{C}_forest": ["test_components_compact_their_edges_past_four_per_row_plus_the_slack"],
    f"x{C}_Components{C}groups": ["test_duplicate_groups_ordered_by_their_first_row_with_distances_to_it"],
    f"x{C}NeighborsResult{C}to_dict": ["test_store_results_and_their_json_records"],
    f"x{C}DuplicatesResult{C}to_dict": ["test_store_results_and_their_json_records"],
    "x_store_duplicates": ["test_store_results_and_their_json_records",
                           "test_approximate_duplicates_equal_exact_ones_across_blocks",
                           "test_nprobe_reaches_the_index_and_a_short_list_is_noted",
                           "test_a_stale_index_is_rebuilt_by_default_and_refused_when_asked"],
    "x_store_neighbors": ["test_store_results_and_their_json_records",
                          "test_queries_by_key_and_by_file_and_how_many_neighbours_they_get",
                          "test_store_notes_an_incomplete_store_and_a_missing_faiss",
                          "test_nprobe_reaches_the_index_and_a_short_list_is_noted",
                          "test_a_stale_index_is_rebuilt_by_default_and_refused_when_asked"],
    "x__resolve_queries": ["test_queries_by_key_and_by_file_and_how_many_neighbours_they_get"],
    "x__query_featurizer": ["test_queries_by_key_and_by_file_and_how_many_neighbours_they_get"],
    "x__search_method": ["test_store_notes_an_incomplete_store_and_a_missing_faiss"],
    "x__approximate": ["test_nprobe_reaches_the_index_and_a_short_list_is_noted"],
    "x__index": ["test_approximate_duplicates_equal_exact_ones_across_blocks",
                 "test_nprobe_reaches_the_index_and_a_short_list_is_noted"],
    f"x{C}ApproximateIndex{C}_probe": ["test_nprobe_reaches_the_index_and_a_short_list_is_noted"],
    f"x{C}ApproximateIndex{C}search": ["test_nprobe_reaches_the_index_and_a_short_list_is_noted"],
    f"x{C}ApproximateIndex{C}range_search": ["test_nprobe_reaches_the_index_and_a_short_list_is_noted"],
    "x_index_paths": ["test_index_files_list_counts_and_unit_rows"],
    "x_n_lists": ["test_index_files_list_counts_and_unit_rows"],
    "x_normalize_rows": ["test_index_files_list_counts_and_unit_rows"],
    "x_store_identity": ["test_the_sidecar_records_the_store_and_the_build_time_in_utc",
                         "test_store_identity_of_a_model_store_and_of_one_without_an_update_time"],
    "x_build_index": ["test_the_sidecar_records_the_store_and_the_build_time_in_utc",
                      "test_an_index_of_one_row_builds_quietly_and_of_none_is_refused",
                      "test_the_quantizer_trains_on_a_seeded_sample_read_across_batches"],
    "x_stale_reason": ["test_stale_reasons_name_what_changed"],
    "x__read_sidecar": ["test_a_sidecar_of_another_format_or_an_index_of_other_rows_is_rebuilt"],
    "x_open_index": ["test_a_sidecar_of_another_format_or_an_index_of_other_rows_is_rebuilt"],
    # the files group (tests/test_model_hostile.py, tests/test_families.py, tests/test_cache.py, tests/test_noise.py)
    "x_cache_identity": ["test_the_identity_of_a_source_stays_what_earlier_versions_computed"],
    **{f"x{C}CachedImages{C}{name}": ["test_cached_images_read_any_rows_views_pickle_and_close_their_file"]
       for name in ("__init__", "__del__", "__getstate__", "numel", "__getitem__", "index_select", "_read")},
    f"x{C}CachedImages{C}fingerprint": ["test_the_fingerprint_of_more_rows_than_one_chunk"],
    "x_build_cache": ["test_a_build_shows_its_progress_from_the_rows_already_cached_and_records_its_meta",
                      "test_a_complete_cache_is_reused_without_reading_it_again",
                      "test_one_decodable_image_is_enough_and_none_is_one_line"],
    "x__read_skips": ["test_skip_reasons_survive_lines_cut_short_and_default_to_could_not_be_decoded"],
    "x__read_meta": ["test_what_is_not_a_complete_cache_and_removing_one"],
    "x__clear": ["test_what_is_not_a_complete_cache_and_removing_one"],
    "x__write_meta": ["test_what_is_not_a_complete_cache_and_removing_one",
                      "test_a_complete_cache_is_reused_without_reading_it_again"],
    "x__first_line": ["test_the_first_line_of_an_error_or_its_type"],
    "x__some": ["test_weights_that_do_not_fit_name_three_and_count_the_rest"],
    "x_read_model_file": ["test_malformed_model_file_is_one_clear_model_error",
                          "test_model_files_record_the_family_and_version_1_files_still_load"],
    "x_save_model": ["test_save_model_makes_its_folders_and_records_the_tool_version"],
    "x_read_torch_file": [
        "test_a_file_written_on_a_gpu_loads_on_the_cpu_and_files_are_called_model_files_by_default",
        "test_unreadable_bytes_are_one_clear_model_error",
        "test_unsafe_pickle_is_refused_without_advice_to_unpickle_it"],
    "x_first_non_finite": ["test_the_first_non_finite_tensor_is_named_past_other_values"],
    "x_check_state_dict": ["test_checks_without_a_source_name_no_file_and_name_extra_weights"],
    "x_model_from_state": ["test_checks_without_a_source_name_no_file_and_name_extra_weights"],
    "x_fingerprint_state": ["test_the_fingerprint_reads_every_dtype_bit_for_bit"],
    **{name: ["test_the_resolver_reads_the_weights_a_store_carries_and_a_run_config_only_as_a_dict"]
       for name in ("x__from_store", "x__run_config", "x_resolve_model")},
    "x_keyed_normal": ["test_indices_and_keys_of_other_integer_types_and_devices",
                       "test_the_smallest_32_bit_half_still_gives_a_finite_value"],
    # the semisup group (tests/test_semisup.py)
    f"x{C}M2Config{C}__post_init__": ["test_settings_at_their_boundaries_and_the_record"],
    f"x{C}M2Net{C}__init__": ["test_the_networks_widths_and_their_defaults"],
    f"x{C}M2Net{C}neg_elbo": ["test_neg_elbo_clamps_the_log_variance_and_draws_its_own_noise"],
    f"x{C}M2Net{C}unlabelled_loss": ["test_the_unlabelled_term_stays_on_the_rows_device_and_warns_nothing"],
    f"x{C}M2Net{C}objective": ["test_the_unlabelled_term_is_left_out_for_no_rows_or_no_weight"],
    f"x{C}M2Classifier{C}predict_proba": ["test_the_classifier_transforms_in_float64_and_answers_in_float64"],
    "x__projection": ["test_projection_keeps_all_axes_unrotated_and_guards_its_scale"],
    "x_fit_m2": ["test_the_fit_is_its_loop_written_out"],
    # the augment group (tests/test_augment.py)
    f"x{C}Augment{C}__post_init__": ["test_the_setting_checks_its_values_types_and_bounds"],
    "x__uniform": ["test_uniform_is_the_normal_distribution_function_kept_inside_0_and_1"],
    f"x{C}Augment{C}__call__": [
        "test_erase_and_noise_use_their_own_draws_on_images_that_are_not_square",
        "test_images_on_another_device_keep_every_tensor_there_and_the_default_dtype_does_not_matter"],
    f"x{C}Augment{C}_warp": [
        "test_shift_crop_and_flip_move_each_image_by_its_own_draws", "test_a_draw_of_exactly_one_half_does_not_flip",
        "test_images_on_another_device_keep_every_tensor_there_and_the_default_dtype_does_not_matter"],
    # the m2vae group (tests/test_m2vae.py)
    "x_read_label_file": ["test_an_unreadable_label_file_is_named"],
    f"x{C}ConvM2{C}__init__": ["test_settings_at_their_boundaries_and_the_heads_widths"],
    **{f"x{C}ConvM2{C}{name}": [
        "test_the_loss_makes_its_tensors_on_the_images_device_and_keeps_the_codes_in_the_autocast_dtype"]
       for name in ("_class_posteriors", "_elbo", "decode")},
    # the vade group (tests/test_vade.py, tests/test_priors.py)
    f"x{C}VaDEConfig{C}__post_init__": ["test_config_and_family"],
    f"x{C}ConvVaDE{C}__init__": ["test_config_and_family", "test_several_processes_are_refused_in_one_line"],
    "x_fit_diagonal_gmm": [
        "test_fit_diagonal_gmm_in_float64_on_the_cpu_for_as_many_codes_as_components_and_for_equal_codes",
        "test_fit_diagonal_gmm_is_kmeans_plus_plus_lloyd_and_em"],
    **{f"x{C}ConvVaDE{C}{name}": [
        "test_the_loss_draws_the_keyed_noise_in_training_only_and_forward_is_the_loss_of_the_images"]
       for name in ("loss", "forward", "_vade_elbo")},
    **{f"x{C}MixturePrior{C}{name}": ["test_mixture_parameters_are_model_state_and_log_variances_are_clamped"]
       for name in ("__init__", "component_logvars", "set_components")},
    "x_prior_assignments": ["test_prior_assignments_hand_float32_codes_on_the_priors_device_and_check_their_width"],
    "x__store_prior": ["test_a_store_model_without_a_prior_attribute_is_refused_in_one_line"],
    # the loop group (tests/test_train_seams.py)
    f"x{C}Loop{C}__init__": ["test_the_loop_is_its_recipe_written_out",
                            "test_two_processes_train_what_one_process_trains_in_this_process",
                            "test_a_process_that_is_not_rank_0_shows_no_progress_and_runs_no_hooks",
                            "test_labels_for_the_batches"],
    f"x{C}Loop{C}restore": ["test_restore_takes_up_the_bookkeeping_of_the_checkpoint",
                           "test_the_progress_bar_counts_every_batch_from_the_epochs_already_run"],
    f"x{C}Loop{C}run": ["test_the_loop_is_its_recipe_written_out",
                       "test_the_progress_bar_counts_every_batch_from_the_epochs_already_run",
                       "test_a_validation_loss_that_is_not_finite_stops_with_the_last_good_checkpoint_named",
                       "test_the_checkpointed_state"],
    f"x{C}Loop{C}_train_epoch": ["test_the_loop_is_its_recipe_written_out",
                               "test_the_progress_bar_counts_every_batch_from_the_epochs_already_run",
                               "test_two_processes_train_what_one_process_trains_in_this_process"],
    f"x{C}Loop{C}_state": ["test_the_checkpointed_state", "test_the_loop_is_its_recipe_written_out"],
    "x__labels_for": ["test_labels_for_the_batches"],
    "x__postfix": ["test_the_progress_bar_text_of_a_row_with_and_without_validation"],
    "x__to_cpu": ["test_the_state_moved_to_the_cpu_is_detached_and_keeps_its_structure"],
    # the entry group (tests/test_probes.py, tests/test_groups.py, tests/test_outliers.py)
    "x_linear_probe": ["test_linear_probe_is_its_selection_loop_written_out",
                       "test_linear_probe_refuses_cs_and_fractions_out_of_range",
                       "test_the_selection_caps_by_default_at_10000_rows_for_the_linear_and_20000_for_the_knn_probe",
                       "test_every_input_of_a_probe_is_named_in_its_error"],
    "x_knn_probe": ["test_knn_probe_is_its_selection_written_out",
                    "test_knn_probe_tries_the_ks_up_to_the_reference_rows_while_choosing",
                    "test_the_selection_caps_by_default_at_10000_rows_for_the_linear_and_20000_for_the_knn_probe",
                    "test_every_input_of_a_probe_is_named_in_its_error"],
    "x_fewshot_curve": ["test_fewshot_curve_is_its_draws_and_methods_written_out",
                        "test_fewshot_curve_checks_its_settings_at_their_boundaries",
                        "test_fewshot_curve_hands_a_method_its_defaults_and_at_most_10000_unlabelled_rows",
                        "test_every_input_of_a_probe_is_named_in_its_error"],
    "x_cluster_probe": ["test_cluster_probe_is_its_methods_and_scores_written_out",
                        "test_cluster_probe_silhouette_needs_two_to_n_minus_one_clusters_among_its_rows",
                        "test_every_input_of_a_probe_is_named_in_its_error"],
    "x_anomaly_scores": ["test_anomaly_scores_fit_the_scorer_with_its_settings",
                         "test_every_input_of_a_probe_is_named_in_its_error"],
    "x_anomaly_probe": ["test_anomaly_probe_is_its_held_out_thresholds_written_out",
                        "test_anomaly_probe_needs_rows_for_the_scores_it_fits",
                        "test_every_input_of_a_probe_is_named_in_its_error"],
    "x_one_class_protocol": ["test_one_class_protocol_is_each_class_fitted_on_its_own_rows_written_out",
                             "test_one_class_protocol_names_the_classes_it_cannot_fit",
                             "test_every_input_of_a_probe_is_named_in_its_error"],
    "x_group_rows": ["test_group_rows_is_its_choice_of_k_fit_relabelling_and_exemplars_written_out",
                     "test_group_rows_breaks_ties_of_size_in_fitted_order_and_of_distance_in_row_order",
                     "test_group_rows_names_its_settings_in_errors"],
    "x_find_outliers": ["test_find_outliers_is_its_scores_ranks_and_neighbours_written_out",
                        "test_find_outliers_names_its_settings_in_errors_and_needs_k_plus_one_rows"],
    # the featurizers group (tests/test_featurizers.py, tests/test_sheets.py)
    "x_register_featurizer": ["test_the_registry_checks_replaces_removes_and_lists_kinds"],
    "x_unregister_featurizer": ["test_the_registry_checks_replaces_removes_and_lists_kinds"],
    f"x{C}VAEFeaturizer{C}fit": ["test_a_vae_featurizer_is_trained_with_the_extraction_options"],
    f"x{C}VAEFeaturizer{C}from_store": [
        "test_a_vae_featurizer_from_a_store_or_a_reference_keeps_its_resize_and_checks_dim"],
    f"x{C}PCAFeaturizer{C}from_store": ["test_pca_featurizer_from_its_store_or_a_reference_and_a_damaged_basis"],
    f"x{C}PCAFeaturizer{C}keep_resize": ["test_pca_featurizer_holds_its_basis_as_float64_and_projects_the_pixels"],
    f"x{C}_PCABatch{C}__init__": ["test_pca_featurizer_holds_its_basis_as_float64_and_projects_the_pixels"],
    "x_fit_pca": ["test_fit_pca_exact_equals_scikit_learns_pca_and_checks_dim_at_its_bounds",
                  "test_fit_pca_beyond_the_covariance_limit_is_incremental_in_pieces_of_at_least_dim_rows"],
    "x_recorded_specs": ["test_recorded_specs_exact_first_then_paths_and_built_in_names_parsed_from_descriptions"],
    "x_save_grid": ["test_save_grid_is_its_layout_written_out"],
    "x_write_sheets": ["test_write_sheets_writes_one_png_per_sheet_with_an_image_and_the_page_in_order",
                       "test_write_sheets_scale_images_up_to_at_least_64_pixels",
                       "test_the_page_is_utf_8_whatever_the_locale"],
    # the setup group (tests/test_distributed_units.py, tests/test_families.py, tests/test_extract.py,
    # tests/test_priors.py)
    **{f"x{C}Dist{C}{name}": ["test_a_single_process_has_collectives_that_do_nothing",
                              "test_two_processes_join_sum_share_compare_and_leave"]
       for name in ("barrier", "all_sum", "on_main", "check_same", "close")},
    "x_from_env": ["test_a_single_process_has_collectives_that_do_nothing",
                   "test_process_numbers_that_are_not_integers_are_one_line",
                   "test_two_processes_join_sum_share_compare_and_leave"],
    "x_lost_contact": ["test_a_lost_process_is_told_from_other_errors_by_its_words_or_its_type"],
    "x_local_device": ["test_each_process_of_a_cuda_run_gets_its_own_gpu"],
    f"x{C}LossModule{C}__init__": ["test_the_module_ddp_wraps_is_the_models_loss"],
    f"x{C}LossModule{C}forward": ["test_the_module_ddp_wraps_is_the_models_loss"],
    **{name: ["test_registration_checks_the_name_sets_arch_once_and_replaces_only_when_asked"]
       for name in (f"x{C}ModelFamily{C}load", "x_register_model_family", "x_unregister_model_family",
                    "x_model_families", "x_get_model_family", "x_model_class")},
    "x_create_model": ["test_create_model_reads_a_config_a_dict_or_none_and_overrides_win"],
    "x_arch_of": ["test_arch_of_and_is_model_need_a_registered_name_on_the_class"],
    "x_is_model": ["test_arch_of_and_is_model_need_a_registered_name_on_the_class"],
    f"x{C}AutoTrainPlan{C}to_dict": ["test_auto_training_takes_given_configs_and_is_recorded_whole"],
    "x_auto_run_dir": ["test_auto_training_takes_given_configs_and_is_recorded_whole"],
    "x_plan_auto_training": ["test_auto_training_plans_epochs_rounded_up_and_clamped_from_5_to_60",
                             "test_auto_training_takes_given_configs_and_is_recorded_whole"],
    "x__estimate_training_seconds": [
        "test_the_training_time_estimate_is_the_second_of_two_timed_steps_scaled_to_the_run"],
    "x_train_for_extraction": ["test_training_for_extraction_resumes_only_a_run_with_a_checkpoint"],
    f"x{C}StandardNormal{C}describe": ["test_each_prior_says_what_it_is_in_words"],
    f"x{C}MixturePrior{C}describe": ["test_each_prior_says_what_it_is_in_words"],
    # the cluster group (tests/test_probes.py, tests/test_registry.py)
    "x_fit_clusters": ["test_fit_clusters_hands_its_settings_to_kmeans_and_the_diagonal_gmm"],
    "x_gmm_reg_covar": ["test_fit_clusters_hands_its_settings_to_kmeans_and_the_diagonal_gmm"],
    "x_check_methods": ["test_check_methods_names_the_option_and_asks_for_umap_only_for_umap_gmm"],
    f"x{C}ClusterProbeResult{C}summary": ["test_cluster_summary_lists_the_scores_each_method_has"],
    **{f"x{C}UmapGmm{C}{name}": ["test_umap_gmm_is_the_n2d_recipe_written_out_on_tiny_inputs"]
       for name in ("__init__", "fit", "predict")},
    **{name: ["test_the_cluster_hooks_pass_the_test_rows_the_counts_methods_and_seed_and_note_the_default_count"]
       for name in ("x__cluster_methods", "x__check_cluster", "x__run_cluster")},
    # the shards group (tests/test_shards.py, tests/test_ray_engine_units.py)
    "x_shard_of_key": ["test_a_key_that_is_no_utf_8_gets_its_shard_from_its_own_bytes_and_shard_rows_are_int64"],
    "x_shard_rows": ["test_a_key_that_is_no_utf_8_gets_its_shard_from_its_own_bytes_and_shard_rows_are_int64"],
    "x__parse_shard": ["test_shard_settings_at_their_edges"],
    "x__same_shard": ["test_a_whole_store_is_not_continued_as_a_shard_nor_from_another_folder"],
    f"x{C}ExtractOptions{C}__post_init__": ["test_extract_options_are_checked_at_their_bounds"],
    "x__check_engine": ["test_engine_options_are_checked_for_the_engine_chosen"],
    "x__options": ["test_options_merge_overrides_and_refuse_unknown_names_and_other_types"],
    "x__store_labels": ["test_store_labels_map_known_labels_and_keep_unknown_ones"],
    **{name: ["test_the_helpers_of_a_writer_empty_batch_non_finite_rows_and_the_space_a_rerun_needs"]
       for name in ("x__empty_batch", "x__check_finite", "x__bytes_needed")},
    "x__resolve_kind": ["test_the_kind_of_features_from_the_store_the_option_or_the_reference"],
    "x__file_exists": ["test_file_exists_only_for_files_of_a_folder_source_also_dangling_links"],
    f"x{C}ExtractProgress{C}to_dict": ["test_the_records_of_a_run_as_dicts"],
    f"x{C}ExtractResult{C}to_dict": ["test_the_records_of_a_run_as_dicts"],
    "x__ray_engine": ["test_extraction_makes_an_engine_of_its_address_and_workers_only_for_engine_ray"],
    "x__iter_rows": [
        "test_on_a_cpu_the_decoding_workers_encode_on_an_accelerator_this_process_and_ray_encodes_on_its_cpus"],
    "x_extract": [
        "test_on_a_cpu_the_decoding_workers_encode_on_an_accelerator_this_process_and_ray_encodes_on_its_cpus",
        "test_an_address_where_no_ray_answers_is_refused_before_anything_is_written",
        "test_one_image_a_shard_of_one_key_or_none_and_the_timing_of_a_run",
        "test_a_new_store_left_without_a_row_is_removed_but_a_store_being_continued_is_kept",
        "test_a_built_in_data_set_is_read_from_the_data_dir_given",
        "test_a_full_disk_names_what_is_kept_and_about_how_much_more_space_is_needed",
        "test_a_whole_store_is_not_continued_as_a_shard_nor_from_another_folder",
        "test_an_in_memory_source_without_walk_skips_is_sharded_too", "test_errors_of_a_run_name_the_store",
        "test_a_run_that_trains_its_model_reports_the_training_and_counts_skips_in_its_speed"],
    # the seams group (tests/test_registry.py, tests/test_train_seams.py, tests/test_model_hostile.py)
    **{name: ["test_the_decorator_forms_pass_every_setting_through_and_replace_when_asked"]
       for name in ("x_register_probe", "x_register_fewshot_method", "x_probe_for_record")},
    "x__check_entry": ["test_descriptions_of_blanks_only_and_names_that_cannot_be_looked_up_are_refused"],
    "x_load_checkpoint": ["test_checkpoint_epochs_and_versions_at_their_boundaries"],
    "x_save_reconstructions": [
        "test_the_reconstructions_page_tiles_originals_over_reconstructions_scaled_to_the_minimum_tile"],
    f"x{C}RunDirWriter{C}_write_reconstructions": [
        "test_the_run_dir_reconstructions_are_the_best_models_of_validation_images_or_else_of_training_images"],
    **{name: ["test_run_dir_files_go_through_a_tmp_name_json_is_indented_by_two_and_checkpoints_carry_their_format"]
       for name in ("x__replace_from_tmp", "x_write_json", "x_save_checkpoint")},
    "x_write_history": ["test_history_files_take_their_columns_from_the_first_row_and_leave_missing_values_empty"],
    # the training group (tests/test_train_setup.py)
    "x_derive_seed": ["test_derive_seed_is_the_seed_sequence_of_the_seed_and_its_keys_shifted_to_63_bits"],
    "x__subset_rows": ["test_the_subset_is_the_first_rows_of_a_seeded_permutation_in_row_order",
                       "test_in_memory_images_are_taken_as_they_are_or_a_seeded_subset_of_them"],
    "x__as_image_tensor": ["test_in_memory_images_are_uint8_square_with_one_or_three_channels"],
    "x_model_overrides": ["test_model_overrides_drop_default_sizes_of_a_config_and_check_a_dicts_names_and_values"],
    "x_agree": ["test_agree_keeps_the_saved_config_and_takes_only_the_free_train_fields"],
    "x_agree_preprocess": ["test_agree_preprocess_reads_the_saved_one_and_refuses_another"],
    "x_existing_run": ["test_what_a_run_dir_holds_and_the_advice_after_an_interrupt"],
    "x_interrupted_advice": ["test_what_a_run_dir_holds_and_the_advice_after_an_interrupt"],
    "x_lock_run_dir": ["test_the_lock_is_held_until_closed_and_names_the_holders_pid"],
    "x_claim_run_dir": ["test_claiming_a_run_dir_removes_only_run_files_of_a_run_that_holds_nothing_of_value"],
    "x_load_data": ["test_in_memory_images_are_taken_as_they_are_or_a_seeded_subset_of_them",
                    "test_files_are_decoded_in_memory_or_into_the_cache_with_their_labels_and_skips",
                    "test_a_subset_of_files_keeps_the_labels_of_its_rows_and_an_array_source_stays_in_memory",
                    "test_a_family_with_classes_takes_their_number_from_the_data_and_fingerprints_its_labels",
                    "test_the_workers_setting_reaches_the_decoding_with_and_without_the_cache"],
    f"x{C}TrainConfig{C}__post_init__": ["test_integer_settings_at_their_bounds", "test_real_settings_at_their_bounds",
                                        "test_the_other_settings_and_the_record"],
    f"x{C}TrainResult{C}to_dict": ["test_a_run_splits_by_its_seed_and_records_its_config"],
    "x_train": ["test_progress_is_shown_by_default_and_data_dir_reaches_the_source"],
    "x__train": ["test_the_run_checks_and_resume_rules",
                 "test_an_error_in_a_single_process_comes_through_as_it_is_and_the_run_dir_is_unlocked",
                 "test_a_family_gets_its_own_config_class_and_a_checkpoint_without_arch_is_the_default_family",
                 "test_a_given_preprocess_is_what_a_new_run_decodes_with",
                 "test_progress_is_shown_by_default_and_data_dir_reaches_the_source"],
    "x__train_in": ["test_a_run_splits_by_its_seed_and_records_its_config",
                    "test_the_validation_rows_are_the_rounded_fraction_at_least_one_and_leave_one_to_train",
                    "test_with_few_labels_validation_takes_the_unlabelled_images_first",
                    "test_autocast_is_recorded_only_when_it_is_on", "test_autocast_trains_in_its_dtype",
                    "test_a_checkpoint_that_does_not_fit_is_named_by_the_first_line_of_the_error"],
    "x__drop_cache": ["test_a_finished_run_drops_its_image_cache_unless_asked_to_keep_it"],
    "x__as_train_config": ["test_the_run_checks_and_resume_rules"],
    # wide group (tests/test_wide_logistic.py)
    f"x{C}PreconditionedLogistic{C}_lbfgs": ["test_fit_is_the_sketch_the_start_curvature_and_two_lbfgs_phases",
                                               "test_the_rule_is_checked_on_the_float64_gradient_when_float32_says_met",
                                               "test_ties_with_tol_stop", "test_lbfgs_is_called_as_scikit_learn_calls_it"],
    f"x{C}PreconditionedLogistic{C}fit": ["test_fit_is_the_sketch_the_start_curvature_and_two_lbfgs_phases",
                                            "test_ties_with_tol_stop", "test_float32_products_in_the_first_phase",
                                            "test_defaults_private_names_ties_and_messages"],
    f"x{C}PreconditionedLogistic{C}__init__": ["test_defaults_private_names_ties_and_messages"],
    f"x{C}PreconditionedLogistic{C}set_params": ["test_defaults_private_names_ties_and_messages"],
    f"x{C}PreconditionedLogistic{C}predict": ["test_defaults_private_names_ties_and_messages"],
    f"x{C}PreconditionedLogistic{C}decision_function": ["test_defaults_private_names_ties_and_messages"],
    f"x{C}PreconditionedLogistic{C}_logits": ["test_float32_products_in_the_first_phase"],
    f"x{C}LowRankSketch{C}__init__": ["test_sketch_rank_one_rank_d_and_the_randomized_svd_settings"],
    "x_resolve_solver": ["test_defaults_private_names_ties_and_messages"],
}

STATUS = {1: "killed", 3: "killed", 0: "survived", 5: "no tests", 33: "no tests", 34: "skipped", 36: "timeout",
          -24: "timeout", 24: "timeout", 152: "timeout", 255: "timeout", None: "not checked",
          -15: "not checked"}
# any other exit code of the test run (a crash: HDF5 aborting on a damaged file, a segfault) is "crashed":
# the tests did not pass, so the mutant is caught; counted with the killed ones and shown apart. -15 (SIGTERM)
# is mutmut's fork runner stopping a test run, not a verdict: such a mutant counts as not run (the entry group
# met it; `--only unchecked` runs it again)
CAUGHT = ("killed", "timeout", "crashed")
COUNTS = ("generated", "killed", "timeout", "crashed", "survived", "no_tests", "equivalent", "skipped", "not_checked")


def tally(counts) -> dict:
    """Of a record's counts (a group's, a file's or their sum; missing fields count 0): the mutants caught, those
    alive (survivors not judged equivalent) and the score (caught / (generated - equivalent - skipped - not run))."""
    c = Counter(counts)
    caught = c["killed"] + c["timeout"] + c["crashed"]
    denom = c["generated"] - c["equivalent"] - c["skipped"] - c["not_checked"]
    return {"caught": caught, "alive": c["survived"] + c["no_tests"] - c["equivalent"],
            "score": caught / denom if denom else None}


MUTANTS = bc.ROOT / "mutants"
STEM = bc.RESULTS / "mutation"


def module_of(path: str) -> str:
    return path[: -len(".py")].replace("/", ".")


def patterns(group: str) -> list:
    return [f"{module_of(path)}.{fn}__mutmut_*" for path, fns in GROUPS[group].items() for fn in fns]


def load_meta(path: str) -> dict:
    meta = MUTANTS / (path + ".meta")
    return json.loads(meta.read_text())["exit_code_by_key"] if meta.exists() else {}


def group_mutants(group: str) -> dict:
    """mutant name -> status, for the functions of ``group``."""
    out = {}
    for path, fns in GROUPS[group].items():
        prefix = module_of(path) + "."
        wanted = {prefix + fn for fn in fns}
        for name, code in load_meta(path).items():
            if name.rsplit("__mutmut_", 1)[0] in wanted:
                out[name] = STATUS.get(code, "crashed")
    return out


DESELECT = ["tests/test_store_hostile.py::test_disk_full_is_one_line_and_resume_finishes_after_space_is_freed"]


def env() -> dict:
    e = dict(os.environ, PYTHONPATH=str(MUTANTS), MPLBACKEND="Agg", OMP_NUM_THREADS="1", PYTHONHASHSEED="0",
             NUMBA_THREADING_LAYER="workqueue", PYTEST_ADDOPTS=" ".join(f"--deselect {t}" for t in DESELECT))
    e.pop("MUTANT_UNDER_TEST", None)
    return e


def run_mutmut(names: list, max_children: int, log: Path) -> float:
    """``mutmut run`` on the mutants matching ``names``; returns the wall time."""
    MUTANTS.mkdir(exist_ok=True)
    link = MUTANTS / "cvae_cli"  # the CLI package as the tests import it (setup.cfg maps cvae_cli to cli/)
    if not link.exists():
        link.symlink_to("cli")
    log.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with open(log, "a") as fh:
        fh.write(f"\n=== mutmut run {len(names)} pattern(s)\n")
        fh.flush()
        subprocess.run(["mutmut", "run", "--max-children", str(max_children), *names], cwd=bc.ROOT, env=env(),
                       stdout=fh, stderr=subprocess.STDOUT, check=False)
    return time.perf_counter() - start


def describe(name: str) -> str:
    """The mutant's change as ``old`` → ``new`` (the first differing line of each side)."""
    from mutmut.mutation.diff_apply import get_diff_for_mutant

    cwd = os.getcwd()
    os.chdir(bc.ROOT)
    try:
        diff = get_diff_for_mutant(name)
    except Exception as err:  # noqa: BLE001 - a description only
        return f"(no diff: {err})"
    finally:
        os.chdir(cwd)
    def side(mark):
        code = [ln[1:].split("  # ")[0].strip() for ln in diff.splitlines()
                if ln.startswith(mark) and not ln.startswith(mark * 3)]
        return " ".join(code)[:110].replace("|", "\\|")

    return f"`{side('-')}` → `{side('+')}`"


def summarize(group: str, statuses: dict, previous: dict) -> dict:
    counts = Counter(statuses.values())
    survivors = sorted((n for n, s in statuses.items() if s in ("survived", "no tests")),
                       key=lambda n: (n.rsplit("__mutmut_", 1)[0], int(n.rsplit("_", 1)[1])))
    equivalent = [n for n in survivors if n in EQUIVALENT]
    alive = [n for n in survivors if n not in EQUIVALENT]
    generated = len(statuses)
    killed = counts["killed"] + counts["timeout"] + counts["crashed"]
    denom = generated - len(equivalent) - counts["skipped"] - counts["not checked"]
    old_killed = {k["mutant"] for k in previous.get("killed_by_new_tests", [])}
    per_file = {}
    for path in GROUPS[group]:
        sub = {n: s for n, s in statuses.items() if n.startswith(module_of(path) + ".")}
        c = Counter(sub.values())
        eq = sum(1 for n in sub if n in EQUIVALENT and sub[n] in ("survived", "no tests"))
        per_file[path] = {"generated": len(sub), "killed": c["killed"], "timeout": c["timeout"],
                          "crashed": c["crashed"], "survived": c["survived"], "no_tests": c["no tests"],
                          "skipped": c["skipped"], "not_checked": c["not checked"], "equivalent": eq}
    return {
        "functions": {p: fns for p, fns in GROUPS[group].items()},
        "generated": generated, "killed": counts["killed"], "timeout": counts["timeout"], "crashed": counts["crashed"],
        "survived": counts["survived"], "no_tests": counts["no tests"],
        "skipped": counts["skipped"], "not_checked": counts["not checked"], "equivalent": len(equivalent),
        "score": killed / denom if denom else None, "per_file": per_file,
        "survivors": [{"mutant": n, "status": statuses[n], "change": describe(n)} for n in alive],
        "equivalents": [{"mutant": n, "change": describe(n), "reason": EQUIVALENT[n]} for n in equivalent],
        "killed_by_new_tests": [{"mutant": n, "change": describe(n)} for n in sorted(old_killed | (
            set(previous.get("survivor_names", [])) & {n for n, s in statuses.items() if s in CAUGHT}))],
        "survivor_names": sorted(set(previous.get("survivor_names", [])) | set(survivors)),
        "wall_s": previous.get("wall_s", 0.0),
    }


NOTES = [
    "How these results were made: `--module store` (stopped half-way, finished with `--only unchecked`), "
    "`--module extraction`, `--module probes`, `--module model` (2026-12-03, 08:11-09:15 UTC), tests written for "
    "the survivors meanwhile, then `--only survivors` (reruns until none was left but the equivalent ones) and "
    "`--report` (the header above is that last command's).",
    "Not mutated by mutmut 3: functions under a decorator other than classmethod/staticmethod. Here that "
    "leaves out the properties of the store's reader and writer (and the others named per group below). The "
    "probes' entry points that `small_data_single_thread` wraps (`linear_probe`, `knn_probe`, `fewshot_curve`, "
    "`cluster_probe`, `anomaly_scores`, `anomaly_probe`, `one_class_protocol`, `group_rows`, `find_outliers`) "
    "were left out the same way until they were wrapped after their definition instead of decorated; they are "
    "the entry group now.",
    "`raise` statements are not mutated (setup.cfg `do_not_mutate_patterns`): their mutants change error words "
    "only; the conditions that lead to them are mutated.",
    "Test selection (setup.cfg): the store, extraction, featurizer, model, prior, training and probe test files, "
    "`tests/test_mutation_survivors.py`, the join and shard tests, `tests/test_ray_engine_units.py` (the Ray "
    "engine without Ray started) and the tests of `cvae cluster` and `cvae outliers` (`tests/test_groups.py`, "
    "`tests/test_outliers.py`, `tests/test_cli_unlabelled.py`: about 10 s, one store made by a 1-epoch "
    "`cvae extract`), and those of `cvae neighbors` and `cvae duplicates` with the approximate index "
    "(`tests/test_neighbors.py`, `tests/test_index.py`: real faiss, about 6 s), and for model files, the "
    "resolver, the image cache and keyed noise `tests/test_families.py`, `tests/test_cache.py` (a few 2-epoch "
    "trainings on 40 digits) and `tests/test_noise.py`, and for M2 `tests/test_semisup.py` (about 10 s), for "
    "augmentation `tests/test_augment.py` and for conv-m2 and its labels file `tests/test_m2vae.py` (a few seconds "
    "each: short trainings on 8x8 images), and for conv-vade `tests/test_vade.py` (about 10 s: a 20-epoch CLI "
    "training on 1000 digits, the others on 8x8 images), and for the training loop `tests/test_train_seams.py` "
    "(about 20 s: short trainings on 8x8 images, one of them in two processes with gloo); the benchmark-script, package-walk, show/report, "
    "data-source and transformer tests are left out (and `tests/test_distributed.py`: two real processes, about a "
    "minute; `tests/test_noise.py` checks the keyed noise instead), and so is `tests/test_ray_engine.py` (a real "
    "local Ray: seconds to start, about 40 s for "
    "the file; `RayEngine.iter_batches`, which only it reaches, is not mutated). The disk-full test (a real tmpfs "
    "and two CLI runs, 10 s or more per mutant) is deselected; in-process tests of a failing disk stand in for it.",
    "The tests run from `mutants/` with `PYTHONPATH=mutants`, so tests that start Python subprocesses (the "
    "SIGKILL tests) run the mutant too, though mutmut cannot see which functions they call. No test writes "
    "into the source tree (only into pytest's temporary folders).",
    "Two reruns of the extraction survivors were stopped half-way (about 9 min, not counted in the wall times): "
    "mutants shown by the progress-bar test hung in mutmut's forked workers on tqdm's multiprocessing lock "
    "and timed out; that test now gives tqdm a threading lock, and the mutants were rerun and killed.",
    "Bug found: raw and PCA extraction raised RuntimeError on a batch in which no file decoded (`pixels()` "
    "reshaped 0 images with -1); fixed in `featurizers.py`, test "
    "`tests/test_featurizers.py::test_a_batch_of_only_undecodable_files_is_skipped_by_raw_and_pca`.",
    "Join group (`cvae join`, added later): the first run (`--module join`, 2026-12-03) left 264 of 1355 mutants "
    "alive (80.5 %); tests for them went into `tests/test_join.py`, 43 were judged equivalent, and two pieces of "
    "dead code were removed (`_part_info` recorded each part's compression, which nothing read; `write_joined` had a "
    "branch for 0 rows that wrote the same empty int64 array as the general case): their 11 mutants went with them "
    "and the two functions' mutants were renumbered (the first run's survivors are counted under their new names). "
    "Then `--only survivors` (all 162 rerun were killed), `--only unchecked` for the two changed functions, and "
    "their 14 equivalent mutants run once by name to confirm that they survive.",
    "Ray group (`cvae_features/ray_engine.py`, added later): the functions that run without Ray (listed in "
    "`benchmarks/mutation.py`; the address probe is tested against small local socket servers, joining Ray with a "
    "stand-in `ray` module, an actor's callable in-process). The first run (`--module ray`, 2026-12-03) left 29 of "
    "563 mutants alive (94.8 %); tests for 13 of them went into `tests/test_ray_engine_units.py` and all 13 were "
    "killed on `--only survivors` (2 as timeouts: a connection made without the probe's timeout waits on a host "
    "that never takes it), one of them (`_same_address` splitting at the first colon: an IPv4-mapped IPv6 host) "
    "on a second rerun; 16 were judged equivalent and run once more by name after the last tests (all survive). "
    "The wall time counts the first run and the first rerun; the second rerun (about a minute) and the check of "
    "the equivalent ones (28 s) are not counted. The address probe then changed (HPACK lengths of 127 bytes or "
    "more, the timeout over the whole exchange; a test for each read's share of the timeout): the group was run "
    "again from scratch (`--module ray`, 576 mutants, 16 alive, the same 16 equivalent changes under new "
    "numbers; their names in `benchmarks/mutation_equivalent.json` moved with them).",
    "Unlabelled group (`cvae cluster` and `cvae outliers`: `cvae_features/groups.py`, `cvae_features/outliers.py`, "
    "added later): the checks of k and of its range, the silhouette per k, a result's exemplars and JSON record, "
    "the contact sheets of groups and of outliers and the two store entry points. Not mutated then: `group_rows` "
    "and `find_outliers`, decorated by `small_data_single_thread` (so the relabelling by size, the distances and "
    "exemplar marks, the rank combination, the flag count and the nearest normal rows are not in the score; "
    "their tests in `tests/test_groups.py` and `tests/test_outliers.py` check them against values computed by "
    "hand; they have been mutated since, in the entry group below). The first run (`--module unlabelled`, "
    "2026-12-03) left 139 of 444 mutants alive (68.7 %: these "
    "functions had been tested only through `group_rows`, `find_outliers` and the CLI); tests for them went into "
    "the three test files, and `--only survivors` killed 117 of the 139; the tests of the store entry points' "
    "`source`, `data_dir` and error wording and of exemplars tied in distance were written during that rerun, and "
    "a second rerun killed the 12 left but 10. Those 10 were judged equivalent (sort kinds that pandas ignores "
    "or reads case-insensitively, a groupby of a frame already sorted, a draw of 0 rows that leaves the "
    "generator as it was) and run once more by name after the last tests: all survive (20 s, not counted in "
    "the wall time). Rerun in full on 2026-12-04 (`--module unlabelled`, 450 mutants) after `_check_k_range` "
    "stopped cutting 2.7 to 2 (the new `_whole` joined the group): 440 killed, the same 10 equivalent.",
    "Neighbors group (`cvae neighbors` and `cvae duplicates`: `cvae_features/neighbors.py`, "
    "`cvae_features/index.py`, added later): the exact top k merged over blocks, the result tables, the duplicate "
    "pairs and their connected components, the store searches (queries as keys or image files, exact or "
    "approximate by size), the JSON records, and the index's sidecar identity, staleness, lists, probes and build. "
    "Not mutated: `DuplicatesResult.n_groups` and `ApproximateIndex.n_lists` (properties: decorated), "
    "`require_faiss` (an import; its raise is left alone). The first run (`--module neighbors`, 2026-12-03) left "
    "347 of 1381 mutants alive (74.9 %; 21 of them in `_Components._forest`, which no test reached: none had more "
    "edges than the compaction bound); tests for them went into `tests/test_neighbors.py` and "
    "`tests/test_index.py`, `--only survivors` killed 256 of the 347, tests for ten more (a query's own row 0 "
    "beside a file query, k = 1 over one block of 300 rows, a key query beside a file query, a float32 distance "
    "rounding past 2, a stale index with the default rebuild) killed them on a second rerun, and 81 were judged "
    "equivalent (dtype defaults, numpy's default axis, fills that the table drops, float64 copies of float32 "
    "similarities, temporary file names, faiss converting queries itself) and run once more by name after the "
    "last tests: all survive (100 s, not counted in the wall time).",
    "Files group (`cvae_features/modelfile.py`, `cvae_features/resolve.py`, `cvae_features/data/cache.py`, "
    "`cvae_features/noise.py`, added later): a model file's fingerprint, writing and the checks on reading it, "
    "torch files read safely, what holds a model told apart (object, run dir, model file, store), the image "
    "cache's identity, build, resume, reads, fingerprint and removal, and the keyed noise (SplitMix64 and "
    "Box-Muller, checked against the recipe written with Python integers in `tests/test_noise.py`, which joined the "
    "selection with `tests/test_families.py` and `tests/test_cache.py`). Not mutated: `ResolvedModel.label` and "
    "`ImageCache.fingerprint` (properties). The first run (`--module files`, 2026-12-03, a fresh `mutants/` for "
    "the new test selection) left 212 of 984 mutants alive (78.5 %); tests for them went into "
    "`tests/test_model_hostile.py`, `tests/test_families.py`, `tests/test_cache.py` and `tests/test_noise.py`, "
    "`--only survivors` killed 162 of the 180 rerun (32 had been judged equivalent by then), tests for ten more "
    "(the exact reasons a torch file is refused with, a cache object whose initialisation failed) killed those on a "
    "second rerun, and 40 were judged equivalent (dtype defaults, getattr defaults never used, torch's zip errors "
    "naming both words tested, weights_only's default under torch 2.14, temporary names renamed at once, the "
    "order of the cache's reads, float32 rounding of the noise's halves one step earlier) and run once more by "
    "name after the last tests: all survive (368 s, not counted in the wall time).",
    "Semisup group (`cvae_features/semisup.py`, Kingma's M2 on feature vectors, the fewshot probe's `m2` method, "
    "added later): the settings' checks and record, the three networks' widths, the labelled term L(x, y), the "
    "unlabelled term U(x), the step's objective, the classifier's transform and outputs, the warm-up weight, the "
    "projection on the principal axes and the seeded fit (`tests/test_semisup.py` joined the selection; the m2 "
    "tests of `tests/test_probes.py` were already in it). Not listed: `_mlp` (three layers, reached through the "
    "widths test) and `M2Classifier.__init__` (assignments). The first run (`--module semisup`, 2026-12-03, a fresh "
    "`mutants/` for the new test selection) left 67 of 478 mutants alive (86.0 %: 32 in `fit_m2`, whose loop was "
    "checked only by a digits fit reaching 80 % and by its seeding); tests for them went into "
    "`tests/test_semisup.py` (among them `fit_m2`'s loop written out in the test, its draws, batches, warm-up and "
    "Adam steps, compared weight for weight), `--only survivors` killed 39 of the 67, a second rerun (the "
    "softmax dimensions given, the one-hot rows made on the rows' device, checked on torch's meta device, the "
    "objective's default weight) killed 7 more and a third the last one (the log-variance floor, tested apart "
    "from the ceiling, whose exp(20) in the KL had hidden it in float32), and 21 "
    "were judged equivalent (dtype conversions that later arithmetic or numpy/torch defaults make anyway, SVD's "
    "full_matrices beyond the k rows kept, randint(high) as randint(0, high), randperm(0) drawing nothing, "
    "fork_rng with no CUDA device) and run once more by name after the last tests (66 s, not counted in the wall "
    "time): 19 survive; two were killed and taken off the list (`_projection`'s `n_components or ...`, by the "
    "one-row projection test, and `one_hot` left to infer the classes, which the meta-device test refuses).",
    "Augment group (`cvae_features/augment.py`, training-time input augmentation, added later): the setting's checks, "
    "the spec string parsed and written canonically, the keyed draws mapped to (0, 1), the one resampling of shift, "
    "crop and flip, the erased patch and the pixel noise (`tests/test_augment.py` joined the selection). Not "
    "mutated: `Augment.active` and `Augment.geometric` (properties). The first run (`--module augment`, "
    "2026-12-03, a fresh `mutants/` for the new test selection) left 72 of 399 mutants alive (82.0 %: the "
    "perturbations had been tested by their spread, not by where each image's own draws put them); tests for them "
    "went into `tests/test_augment.py` (the geometric draws read back from two ramps against the pixel-coordinate "
    "formula, the erased square and the noise on non-square images against the recipe, the distribution function "
    "at its clamps, a row whose flip draw is exactly one half, found by a search, images on the meta device, "
    "torch's default dtype set to float64, the align_corners warnings, an int32 key at 2^31 - 1), "
    "`--only survivors` killed 51 of the 72, and 21 were judged equivalent (clamps of the shift and of the erased "
    "square that never bind because the draws lie in [1e-7, 1 - 1e-7], grid_sample's default mode and padding, "
    "the rows' integer type, which keyed_normal converts itself, a `.to` of the device the noise is already on).",
    "m2vae group (`cvae_features/m2vae.py`, the convolutional M2 `conv-m2`, and `cvae_features/data/labelfile.py`, "
    "its labels file, added later): the settings' checks, the heads' widths, q(z | x, y) with its clamp, the "
    "class-conditional decoder, the embedding as the class mixture's moments, the labelled and unlabelled terms and "
    "their weights, the keyed noise shared by every class, the codes and reconstructions of a batch; the key,label "
    "CSV and the labels attached by key (`tests/test_m2vae.py` joined the selection). Not mutated: "
    "`ConvM2.class_probabilities` and `ConvM2.scores` (under `torch.no_grad`: decorated; the tests check both "
    "against the heads). The first run (`--module m2vae`, 2026-12-03, with tests written beforehand for the noise "
    "term, the batch's codes, the clamps, the settings' bounds and the label file's edge cases) left 28 of 525 "
    "mutants alive (94.7 %); tests for them went into `tests/test_m2vae.py` (the tensors the loss makes, spied on, "
    "all named on the images' device, since the loss reads `labels.max()` and cannot run on the meta device; the "
    "codes kept in the autocast dtype; the batch means; the classifier's SiLU; an unreadable labels file named), "
    "`--only survivors` killed 17 of the 28, and 11 were judged equivalent (dtype defaults that torch.full, "
    "np.full, torch.eye or type promotion give anyway, -2 for -1 as the unlabelled mark, the mixture's lower "
    "log-variance clamp below its variance floor). The 32 equivalent mutants of the two groups were run once more "
    "by name after the last tests: all survive (69 s, not counted in the wall time).",
    "vade group (`cvae_features/vade.py`, the mixture-prior family `conv-vade`; `MixturePrior` in "
    "`cvae_features/priors.py`; the 'prior' cluster method's `prior_assignments` in `cvae_features/probes/cluster.py` "
    "and `_store_prior` in `cvae_features/probes/_builtin.py`, added later): the settings' checks, the GMM fit "
    "(k-means++, Lloyd iterations, EM), the model's buffers and its refusal of several processes, the loss's keyed "
    "noise and steps, the mixture's parts, KL bound and its split over dimensions, responsibilities and log density, "
    "the rows assigned on the prior's device and the store's model resolved (`tests/test_vade.py` joined the "
    "selection, `cvae_features/probes/_builtin.py` the mutated modules). Not mutated: `ConvVaDE._count_step` (the "
    "pretraining schedule: the ring buffer of codes, the fit after the last step), `fit_prior`, "
    "`cluster_probabilities`, `cluster`, `MixturePrior.assign` and `sample` (under `torch.no_grad`: decorated), "
    "`ConvVaDE.pretraining` and `loss_prior`, `MixturePrior.mean` and `stddev` (properties); `tests/test_vade.py` "
    "checks them by value. The first run (`--module vade`, 2026-12-03, a fresh `mutants/` for the new test "
    "selection) left 88 of 533 mutants alive (83.5 %: 17 in `prior_assignments`, tested only with a MixturePrior "
    "on the CPU; 35 in `fit_diagonal_gmm`, tested only on separated blobs, where most of its steps cannot change "
    "the result; `ConvVaDE.forward`, which no selected test called); tests for them went into `tests/test_vade.py` "
    "and `tests/test_priors.py` (the GMM fit's recipe written out in numpy and scipy and compared on codes that make "
    "each step count: overlapping codes, codes of small scale, fewer distinct codes than components, a singleton "
    "and an emptied component during Lloyd, the last two found by a search; the codes converted once to float64 "
    "on the CPU, spied on; the 'prior' method's codes spied on by a prior with parameters on the meta device, "
    "without parameters or without `dim`; the settings at their bounds; the loss's keyed noise against "
    "`keyed_normal`; `set_components`' clamps; exact error words), `--only survivors` killed all 78 rerun, and 10 "
    "were judged equivalent (equal weights of the uniform draw in float32, int64 counts promoted by the division, "
    "a loop range past its break, a constant added to every component's log density before the softmax, `copy_` "
    "casting and moving by itself, a log taken before or after the float32 rounding) and run once more by name "
    "after the last tests: all survive (79 s, not counted in the wall time). No bug found.",
    "Loop group (`cvae_features/_train_loop.py`, the training loop, added later): the loop's set-up (labels for the "
    "batches, the labelled rows, batches per epoch, Adam and the schedules, the gradient scaler, the augmentation's "
    "check, DDP's wrapper), restoring a checkpoint, the epochs (validation loss and its NaN guard, the history row, "
    "the best epoch, early stopping, the state checkpointed and handed to the hooks, the progress bar), an epoch's "
    "batches (the seeded order, the labelled draw, the augmentation hand-off as `inputs` or `images`, the keyed "
    "noise, beta's warm-up, the optimizer, clipping and scaler steps, the NaN guard, the size-weighted means, each "
    "process's share of a global batch), the NaN message, the progress text and the state moved to the CPU "
    "(`tests/test_train_seams.py` joined the selection). Not mutated: `Loop._evaluate` (under `torch.no_grad`: "
    "decorated; the validation loss is checked against its recipe in the written-out test). The first run (`--module "
    "loop`, 2026-12-03, the tests as they were) was stopped after 128 of the 709 mutants (the slowest mutants of a "
    "loaded machine: another mutation run and a benchmark shared the 2 cores): 89 killed, 39 survived (69.5 % of "
    "those run; 12 in `restore`, 27 in `__init__`). All 709 then ran with the new tests (`--only unchecked`) in a "
    "fresh, narrowed `mutants/` (only `_train_loop.py` mutated, only `tests/test_train.py` and "
    "`tests/test_train_seams.py` selected: the warm-up of the whole selection took minutes at each start; with the "
    "whole selection of setup.cfg more tests run per mutant, so the score can only be the same or higher). New tests "
    "(`tests/test_train_seams.py`): the loop written out step by step (seeded order, labelled draw, augmentation "
    "keys, global generator seeded for families that draw their own noise, beta's warm-up, Adam, the three schedules,"
    " clipping, a gradient scaler (on the CPU, standing in for CUDA's float16 one) with and without clipping, float16"
    " autocast on the CPU) and compared weight for weight, batch for batch and row for row; two real processes (gloo)"
    " started by the test against one process in it, with an uneven split and a process left without rows; the "
    "progress bar (a stand-in tqdm and a clock that moves one second a reading); restore's bookkeeping and scaler; "
    "the checkpointed state; a validation loss that is not finite; an epoch that only ties the best validation loss; "
    "a weight left without a gradient; labels, the progress text and the state moved to the CPU. Two harness fixes: "
    "under mutmut `tests/conftest.py` runs a mutant's tests quickest first (by mutmut's recorded durations) and gives"
    " tqdm a lock of each worker's own (twice two forked workers hung for minutes, with no CPU use, in tests with "
    "tqdm bars, most likely on a lock made in the fork server and shared by the workers; with their own lock none "
    "hung again), and the real-tqdm test in `tests/test_train.py` now takes the same "
    "precaution as the extraction's). After the first rerun 76 of the 709 were alive (633 killed, 89.3 %); tests for "
    "ten of them (the clean-target check for a family without encoder inputs or that does not say, beta's warm-up "
    "through DDP, a weight left without a gradient, a tied validation loss) killed all ten on `--only survivors`: 709"
    " mutants, 643 killed, 66 equivalent. 66 were judged equivalent, 50 of them CUDA only: device placement (the "
    "model, the images, the permutation, the labelled draw, the batch moved, pinned memory), fused Adam, the float16 "
    "gradient scaler made on CUDA, DDP's device_ids, and the NaN guard's window of 25 batches, which on the CPU "
    "checks every batch; no GPU was available to this run, so these are untested here and a GPU run could kill them. "
    "The others: dtype defaults that torch gives anyway, a share of 1.0 read only with several processes, a process "
    "left without rows computing rows[:1] or rows[:2] weighted 0, the loop's break at the last epoch, initial values "
    "that the first epoch overwrites before they are read (best epoch, bad epochs, stopped early, term names), the "
    "state returned only when no epoch is left; they were not run again by name after the last tests (the shared "
    "machine was loaded). Stopped runs (about 35 min) are not counted in the wall time. No bug found.",
    "Entry group (the probes' entry points: `linear_probe`, `knn_probe`, `fewshot_curve`, `cluster_probe`, "
    "`anomaly_scores`, `anomaly_probe`, `one_class_protocol`, and `group_rows`, `find_outliers` behind `cvae cluster` "
    "and `cvae outliers`; added later): mutmut leaves decorated functions out, and these were decorated by "
    "`small_data_single_thread`; they are now wrapped after their definition (`f = small_data_single_thread(f)`), "
    "which behaves the same (functools.wraps keeps names and docstrings). A group of their own, so that the "
    "probes and unlabelled groups keep their runs. The first run (`--module entry`, 2026-12-03, the tests as they "
    "were) was stopped after 1194 of the 1907 mutants: a survivor of `fewshot_curve` or `cluster_probe` runs "
    "every test that calls it (M2 trainings, a UMAP fit of 50 s), and the rest would not have fitted the time at "
    "hand; of "
    "those 1194, 889 were killed and 305 survived (74.5 %: the entry points "
    "had been tested by what they achieve on separable or noisy blobs, not by the numbers they record: the validation "
    "scores, settings, timings, thresholds and error wording). Tests for them went into `tests/test_probes.py` (each "
    "entry point written out against its helpers: the splits, the warm-started logistic fits, the neighbour votes, "
    "the draws and the registered methods' predictions, the clusterers and scores, the scorer, the held-out "
    "thresholds with a held-out row at the threshold and its copy among the test rows, the one-class fits; the "
    "timings read from a fake clock; every input named in its error; the settings at their bounds and the defaults, "
    "seen by spies on the fits), `tests/test_groups.py` (the choice of k with a tie, the fit's arguments, ties of "
    "size and of distance that quicksort would reorder, found by a search) and `tests/test_outliers.py` (ranks, "
    "flags and neighbours written out on rows that tie). The remaining 713 mutants were then run with these "
    "tests (`--only unchecked`): 633 killed, 13 survived, and 67 of "
    "`cluster_probe`'s ended with exit code -15 (SIGTERM from mutmut's fork runner, not a failing test: a worker "
    "that had passed the fast tests and reached the slow ones; they are not counted as caught). The survivors were "
    "rerun by name (what `--only survivors` does, with those 67 added: they ended with -15 again): 292 of the "
    "294 not judged equivalent by then were killed. The 67 were then run by hand, each in a fresh process, with "
    "the same tests fastest first "
    "(`MUTANT_UNDER_TEST=<name> PYTHONPATH=mutants pytest -x <the tests mutmut lists for cluster_probe, and the two "
    "written for them>`), and their exit codes written into `mutants/cvae_features/probes/cluster.py.meta`: "
    "63 killed, 4 survived (judged equivalent). 29 mutants were judged "
    "equivalent (names given by default, dtype and replace arguments that change nothing, sort kinds that numpy "
    "reads case-insensitively, n_jobs, roundings of sums of times already rounded, bounds met only by draws of all "
    "rows, a rounding that differs only beyond about 10^6 rows); after the last tests the 25 of them outside "
    "`cluster_probe` were run once more by name (63 s, not counted in the wall time) and the 4 in it by hand: all "
    "survive. One survives: `anomaly_probe` turns `is_anomaly` "
    "into int64 before `check_labels`, so non-integer marks (0.5) are cut to 0 silently where the mutant (no "
    "conversion) refuses them; pinning the cut would pin a fault, so it is left alive and reported (fix: drop the "
    "`.astype(np.int64)`; `check_labels` takes booleans and refuses non-integers). That fix was made after the run "
    "(tests/test_probes.py::test_anomaly_probe_refuses_marks_that_are_not_0_or_1_instead_of_cutting_them), and "
    "the entry functions of anomaly.py were run again on the fixed code (anomaly_scores, anomaly_probe, "
    "one_class_protocol: 505 mutants, two fewer; 501 killed, 4 survived: the four equivalents of anomaly_probe, "
    "renumbered by the edit (124, 125, 136, 138 became 122, 123, 134, 136; the same changes, checked); 317 s, not "
    "counted in the wall time). The other files' results are those of the run before.",
    "Featurizers group (`cvae_features/featurizers.py`, `cvae_features/sheets.py`, added later; "
    "`tests/test_sheets.py` joined the test selection): the registry, the vae, raw and pca kinds (obtained, "
    "checked against dim, their store fields, resize, state and batch calls), the PCA fingerprint and the streamed "
    "PCA fit, and the contact sheets (the recorded source parsed into specs, the images read back, the grids, the "
    "page). Not mutated: the three `fingerprint` properties (decorated); listed without mutants: the base class's "
    "methods that only raise, the `state()` that return {}, `get_featurizer` and `RawFeaturizer.batch_fn`. The "
    "first run (`--module featurizers`, 2026-12-03, the tests as they were: tests/test_featurizers.py and the "
    "unlabelled group's CLI tests, which reach sheets.py) was stopped after 147 of the 940 mutants (a sheets "
    "mutant ran the CLI tests with their 1-epoch `cvae extract`, about 10 a minute); of those 147, 107 were caught "
    "and 40 were alive (34 survived, 6 no tests: 72.8 %: the registry's checks, the VAE featurizer's store and "
    "training options, the PCA featurizer's store, the sheets' page, folder and scale). Tests written meanwhile "
    "went into `tests/test_featurizers.py` (the base class's fields; the registry at every check; the VAE "
    "featurizer trained with its options on a built-in set in data_dir, from a store or a reference, its batch "
    "call's eval copy and extras; pixels; raw and pca from their stores and references, with dim checked; "
    "`pca_fingerprint` against its hash written out; `fit_pca` exact against scikit-learn's PCA and, with the "
    "covariance limit lowered, incremental against IncrementalPCA fed the very pieces: a first batch shorter than "
    "dim held, an empty batch, a batch of exactly dim rows, the last rows joined to the batch before, the default "
    "of 256; the progress bar's settings and counts through a tqdm stand-in) and `tests/test_sheets.py` (find_key "
    "breadth first, recorded_specs, StoreImages on a real folder and store with a moved, a gone and a built-in "
    "source, the grids compared pixel for pixel with the layout written out, the page written out, the scale at "
    "its bounds, the page's encoding under an ASCII locale in a subprocess). The other 793 mutants were then run "
    "with them (`--only unchecked`): 727 killed, 1 timeout, 65 survived. One survivor was a bug: `recorded_specs` "
    "took a description's first word up to a space only, so `digits:test<TAB>(450 images)` gave the spec "
    "`digits:test<TAB>(450` instead of `digits:test`; it now splits at any white space (the test has both "
    "cases). The edit regenerated recorded_specs' mutants (58 became 51). `--only survivors` (75 mutants), "
    "`--only unchecked` (the 51) and `--only survivors` (3: the encoding test had first called write_sheets only in "
    "its subprocess, which mutmut does not see; it now also writes the page in-process and compares the bytes) "
    "left 43 alive, all judged equivalent: CUDA-only moves and memory formats (no GPU in these runs; a test "
    "skipped without CUDA checks them where CUDA is), non_blocking, defaults that are never read (the base "
    "store_fields' carry_weights, a rowless sheet's width, the plan's estimate nobody asked for), Pillow's own "
    "defaults (the default font, the mode fromarray infers, the fill 0 of RGB, format and codec names in any "
    "case), square images' shape indices, a sign that cannot be 0, split's maxsplit when only the first piece is "
    "read, None or '' where only truth is read. The 43 were run once more by name after the last tests: all "
    "survive (not counted in the wall time). The wall time counts the stopped first run and the four reruns.",
    "Setup group (the set-up around a training run, added later): `cvae_features/_distributed.py` (the process "
    "group joined from torchrun's variables, the collectives `barrier`, `all_sum`, `on_main`, `check_same`, "
    "leaving the group, a lost process told from other errors, each process's GPU, the module DDP wraps), "
    "`cvae_features/families.py` (the model families' registry), `cvae_features/autotrain.py` (the plan extract "
    "trains by when no model is given: epochs, configs, its record, the time estimate and the run) and the two "
    "`describe` methods of `cvae_features/priors.py`. Not mutated: `Dist.active` and `Dist.main` (properties: "
    "decorated; every collective's test runs through them). Run in a narrowed `mutants/` (only these four files "
    "mutated; tests/test_families.py, test_priors.py, test_extract.py, test_train.py, test_train_seams.py, "
    "test_model.py, test_registry.py and, from the second run on, test_distributed_units.py selected: with the "
    "whole selection of setup.cfg more tests run per mutant, so the score can only be the same or higher). The "
    "first run (`--module setup`, 2026-12-03, the tests as they were) left 271 of 471 mutants alive (42.5 %: 69 "
    "with no test at all, the collectives and `lost_contact`, called only in subprocesses or in the slow "
    "tests/test_distributed.py, which is not selected; `from_env` seen only as a single process; the plan's "
    "given configs, record and time estimate, and `train_for_extraction`'s resume and overwrite, untested). New "
    "tests: tests/test_distributed_units.py (a single process whose collectives do nothing; process numbers that "
    "are not integers; `lost_contact` by words, type, gloo's location prefix, first sentence and line, 120 "
    "characters; `local_device` with torch.cuda's GPU count and `set_device` stood in for; the module DDP wraps; "
    "two real gloo processes, this one as rank 0 and one it starts, joining from the environment, NCCL asked "
    "for by a CUDA device and refused without a GPU, the group's timeout, joining again, barrier, sum, "
    "on_main's result and errors, check_same's message, closing: about 7 s), tests/test_families.py (the "
    "registry's name checks, arch set once, replacement, order, unknown and unhashable names; create_model's "
    "configs and overrides; arch_of and is_model), tests/test_extract.py (the epochs rounded up and clamped, "
    "given configs, the source's own size and channels, the data_dir, the plan's record, the time estimate's two "
    "steps written out against a fake clock, `train_for_extraction`'s resume and overwrite seen by a spy that "
    "calls the real training) and tests/test_priors.py (describe). A second run (`--only survivors`: the new test "
    "file changed the selection, so mutmut reset every verdict and collected its stats again) killed 243 of the "
    "271, `--only unchecked` killed again the 200 of the first run, and `--only survivors` the 4 left by then (a "
    "gloo location with a space, the source's 3 channels when the default 1 is asked, the data_dir of a built-in "
    "source). 24 were judged equivalent: 10 CUDA only (where `all_sum` moves a CUDA tensor to the CPU for gloo "
    "and back, and the 30-minute timeout left out, which NCCL would make 10 minutes; no GPU was available to "
    "this run, so these are untested here and a GPU run could kill them), and 14 that change nothing (split's "
    "maxsplit before [0], `.cpu()` of a CPU tensor, all_reduce's and broadcast_object_list's defaults, "
    "torch.device(i) as cuda:i, the backend name's case, randint's low of 0, times[+1] of two times, the clamp "
    "at 60 epochs for one image, float('NAN'), rpartition of a one-colon spec); all 24 were run once more by name "
    "after the last tests: all survive (194 s, not counted in the wall time). No bug found.",
    "Cluster group (the clustering code the probes, vade and entry groups do not list, added later): "
    "`check_methods`, the N2D recipe `UmapGmm` (UMAP's settings, the full-covariance GMM on the embedding, predict "
    "of the fitted rows or of new ones), `fit_clusters`, `gmm_reg_covar`, `ClusterProbeResult.summary` in "
    "`cvae_features/probes/cluster.py`, and the cluster probe's registry hooks `_cluster_methods`, `_check_cluster`, "
    "`_run_cluster` in `cvae_features/probes/_builtin.py` (`import_umap` is listed but has no mutant: its only "
    "statements are the import and the raise, which is left alone). The first run (`--module cluster`, "
    "2026-12-03, a fresh `mutants/` for the new test selection, the tests as they were) checked 119 of the 196 "
    "mutants, all killed; the other 77 ended with exit code -15 within 0.2-0.5 s. The cause: mutmut runs the "
    "stats collection in its own process, where the UMAP tests start numba's OpenMP thread pool, and numba's "
    "OpenMP layer kills a child forked from a process that has used it with SIGTERM (omppool: \"Terminating: "
    "fork() called from a process already using GNU OpenMP, this is unsafe.\"); mutmut forks every mutant's run "
    "from that process. This is most likely also the -15 that the entry group met in `cluster_probe`. With "
    "`NUMBA_THREADING_LAYER=workqueue` in the environment (numba's own thread pool, which survives a fork) the 77 "
    "ran (`--only unchecked`, with the new tests): none ended with -15 again. New tests: "
    "`tests/test_probes.py` (the settings `fit_clusters` hands to KMeans and the diagonal GMM, compared with fits "
    "made directly, the variance floor below a total variance of 1, scikit-learn's warnings kept inside; "
    "`check_methods`' option name and umap-learn asked for only for umap-gmm; `summary` of every score and none; "
    "the N2D recipe written out on 12 and 6 rows: UMAP's settings read back, including the neighbour count at "
    "n - 1 and at its floor of 2, the spectral start only with more rows than clusters + 1, no n_jobs warning from "
    "UMAP, the embedding against UMAP fitted directly, the mixture against one fitted directly on the embedding, "
    "predict's mixture input spied on for the fitted rows and for other rows) and `tests/test_registry.py` (the "
    "hooks called with a ProbeData and a ProbeContext: the test labels or 10 clusters and the note, the methods, "
    "count and seed against `cluster_probe` called directly, the DataTooSmall reworded, the 'prior' method's "
    "check). 4 survived and were judged equivalent: GaussianMixture's defaults (covariance_type 'full', "
    "reg_covar 1e-6), and predict embedding the fitted rows again (`_fitted = None`, or always transforming): "
    "UMAP's transform returns its own embedding_ for rows of the fitted input's hash. Score 100 %. No bug found.",
    "Shards group (extraction's entry point and the steps and helpers the extraction group does not list, added "
    "later): `extract`, `ExtractOptions.__post_init__`, `_options`, `_check_target`, `_empty_batch`, "
    "`_record_ignored`, `_store_labels`, `_check_finite`, `_iter_rows`, `_ray_engine`, `_check_engine`, "
    "`_parse_shard`, `_same_shard`, `_file_exists`, `_bytes_needed`, `_resolve_kind`, `ExtractProgress.to_dict`, "
    "`ExtractResult.to_dict` in `cvae_features/extraction.py`, and `shard_of_key`, `shard_rows` in "
    "`cvae_features/data/sources.py` (which joined the mutated modules; only these two of it are listed). Not "
    "listed: `_extract_joined` (join group), `ExtractOptions.extras` (a property). The first run (`--module "
    "shards`, 2026-12-03, with tests written beforehand from the list of mutants for the options' bounds, the "
    "engine's checks, the shard's edges, the labels map, the empty batch, the non-finite check, the feature kind, "
    "`_file_exists` and the records) was stopped after 242 of the 573 mutants (each survivor of `extract` runs "
    "every extraction test of the selection, and the rest would not have fitted the time at hand): 222 killed, "
    "20 survived (91.7 %). The other 331 then ran with more tests (`--only unchecked`): 316 killed, 15 survived; "
    "`--only survivors` (the 28 not judged equivalent by then) killed 15 more. New tests: `tests/test_shards.py` "
    "(a key that is no UTF-8 and empty shard rows; the shard setting at its edges; a whole store refused as a "
    "shard and another folder refused, each naming the store; the options at their bounds, the exclusive modes, "
    "the engine's checks word for word; `_options` merging overrides and refusing unknown names and other types; "
    "labels mapped; the empty batch, the non-finite rows and the bytes a rerun needs on a real writer; the "
    "feature kind from a store, the option or a reference; dangling links; the records as dicts; where the "
    "encoder runs: a raw featurizer that notes the device its batch call is made for and the process of each "
    "call, in the decoding workers on a CPU, in this process with workers=0 or on an accelerator (torch's meta "
    "device stands in), and on the CPU for engine='ray', stopped before Ray is reached; a Ray address where no "
    "Ray answers refused before anything is written; one image, a shard of one key and an empty shard, a run's "
    "seconds and speed from a fake clock, skipped images counted in the speed; a new store left without a row "
    "removed, a store being continued kept; a built-in data set read from the data_dir given; a full disk "
    "(shutil.disk_usage reporting 1000 bytes free after the first batch, or at once) naming what is kept and "
    "about how many MB more are needed; an in-memory source sharded; the max_bad and pending-files errors naming "
    "the store; an auto-trained model's run dir, training time and image count) and "
    "`tests/test_ray_engine_units.py` (the RayEngine made for engine='ray' with the address and workers given). "
    "7 were judged equivalent (a codec name in capitals, int.from_bytes' byteorder default from Python 3.11, "
    "replace() of an equal shard, np.full's default integer for labels the store converts anyway, `_rewrite_changed` "
    "returning 0 at once without update, float('NAN')) and run once more by name after the last tests: all "
    "survive (155 s, not counted in the wall time). 13 survive, all reachable only with a real Ray: the ten "
    "arguments `_iter_rows` hands to `RayEngine.iter_batches` (source, preprocessing, encoder, indices, batch "
    "size), `ray=None` in the run's settings (the local workers then do the Ray engine's work and write the same "
    "store) and `opts.engine == 'XXrayXX'`/`'RAY'` in `in_workers` (on a CPU in_workers is true either way; it "
    "differs only for engine='ray' on an accelerator). Starting a local Ray costs tens of seconds, so "
    "tests/test_ray_engine.py stays out of the selection. Run by hand on a real local Ray, each in a fresh process "
    "(`MUTANT_UNDER_TEST=<name> PYTHONPATH=mutants pytest -x tests/test_ray_engine.py -k <five of its tests>`, "
    "10-66 s each), the ten of `_iter_rows` and `ray=None` were killed there; the two of `in_workers` survived "
    "it, so a test went into `tests/test_ray_engine.py` (engine='ray' where this machine's device is an "
    "accelerator, torch's meta device standing in: the store is the local engine's), which kills both by hand. "
    "They are counted as survived here, as the selection does not run them. Score 97.7 %. No bug found. Harness: every "
    "run after the first was made with `NUMBA_THREADING_LAYER=workqueue` (see the cluster group; `env()` sets it "
    "now). The extraction group listed `x_file_identity` under `cvae_features/extraction.py`, but `file_identity` "
    "is defined in `cvae_features/data/sources.py` (extraction imports it), so that entry matched no mutant: it "
    "left the extraction group's list (whose counts it never changed) and joined this group under `sources.py` "
    "(`--only unchecked`, 35 mutants, 27 killed, 8 survived, all judged equivalent: dtypes numpy infers as "
    "int64 anyway, and integer rows kept as integers). Group: 608 mutants, 580 killed, 15 equivalent, 13 survived "
    "(the Ray-only ones above): 97.8 %.",
    "Seams group (the extension points of the seams redesign, added later): every undecorated function of "
    "`cvae_features/probes/registry.py` (`ProbeContext.note`, `ProbeSpec.__post_init__`, `_check_entry`, "
    "`register_probe`, `unregister_probe`, `get_probe`, `probe_names`, `probe_for_record`, "
    "`register_fewshot_method`, `unregister_fewshot_method`, `get_fewshot_method`, `fewshot_methods`), of "
    "`cvae_features/_train_hooks.py` (`TrainHook`'s three methods, listed but without mutants: `pass`; "
    "`CallbackHook.__init__`/`on_batch_end`, `RunDirWriter.__init__`/`on_epoch_end`/`_write_reconstructions`) and of "
    "`cvae_features/_rundir.py` (`_replace_from_tmp`, `write_json`, `save_checkpoint`, `load_checkpoint`, "
    "`write_history`, `write_skipped`, `save_reconstructions`); the three files joined the mutated modules. The runs "
    "(`--module seams --max-children 1`, 2026-12-04, 00:53-01:05 UTC) were made with a narrowed `setup.cfg` "
    "(only these three files mutated; tests/test_registry.py, tests/test_train_seams.py, tests/test_train.py, "
    "tests/test_model_hostile.py and tests/test_json.py selected); the committed one keeps the full lists. First "
    "run: 405 mutants, 327 killed, 78 survived (80.7 %): 37 in the registry, nearly all in the decorator forms of "
    "`register_probe` and `register_fewshot_method` (the built-in entries use the call form and register at "
    "import, before a mutant is switched on; no test used the decorator form), 11 in `_write_reconstructions` and 30 in the run "
    "directory's files, whose bytes the training tests never looked at. New tests: `tests/test_registry.py` (both decorator forms with "
    "every setting checked, replace through the decorator and directly, `probe_for_record` of another record "
    "name and of none; blank and missing descriptions, unhashable names looked up), "
    "`tests/test_model_hostile.py` (a checkpoint of epoch 0 and one without a format_version load, epochs of -1, "
    "True, '1' and 1.0 are refused), `tests/test_train_seams.py` (the reconstructions page pixel for pixel, grey "
    "and colour, scaled by 1, 2 and 3; RunDirWriter's reconstructions from the validation images or, without "
    "them, the first 16 training images, against the saved model's decoded means; json indented by two, an "
    "interrupted write leaving the old file and `<name>.tmp`, the checkpoint's format keys; the history's "
    "columns from the first row, missing values empty, an empty history). `--only survivors` (68 mutants): all "
    "killed but one, judged equivalent with the ten judged before: the clamp of `_write_reconstructions` on values "
    "`decode_mean` already keeps in [0, 1] (4), `.to(None)` of rounded values the uint8 canvas casts to the same "
    "bytes, `open(newline=None)` or without newline for the csv files (4: the same bytes on POSIX), a resize by "
    "a factor of 1 (a pixel copy), format='png' (Pillow upper-cases it). Group: 405 mutants, 394 killed, 11 "
    "equivalent: 100 %. Wall time about 11 min (first run 10 min, survivors 1 min). No bug found. Not mutated: "
    "nothing of the three files is decorated; the dataclasses have no other code.",
    "Training group (how a training run is set up: every undecorated function of `cvae_features/_train_setup.py` "
    "and, of `cvae_features/training.py`, TrainConfig's checks and record, `train`, `_train`, `_train_in`, "
    "`_finish`, `_drop_cache`, `_result`, `_as_train_config` and TrainResult.to_dict; added later; the loop itself "
    "is the loop group). Not mutated: TrainResult.best_val_loss and images_per_s (properties). "
    "`tests/test_train_setup.py` joined the selection (50 tests, about 4 s: each helper against its rule written "
    "out, TrainConfig at every bound, one-epoch runs on 6-10 random 8x8 images). Made on 2026-12-04 (00:50-01:26 "
    "UTC) with a narrowed working setup.cfg (only these two files mutated, only tests/test_train.py, "
    "tests/test_train_seams.py and tests/test_train_setup.py selected; the committed setup.cfg keeps every list "
    "and adds these). The first run (`--module training`, the existing tests only) was stopped after 293 mutants "
    "with 79 alive (73.0 %); the tests written meanwhile joined the stats (mutmut collects new tests' stats) and "
    "`--only unchecked` finished the pass (86.7 % over all 1283, some mutants having met the new tests, some "
    "not), then `--only survivors` five times (two of them stopped and restarted, the last ones with "
    "`--max-children 2`) as tests were added (the last for the `workers` setting handed to decoding, checked by the process that decodes). 26 equivalent (integer fills and asarray dtypes that are int64 "
    "anyway, first values never read, shape[-2] of square images, a subset of every row, SeedSequence's "
    "prefix-stable words, the closed upper bound no field has, a mkdir that lock_run_dir already made, "
    "conditions that cannot hold). 37 survive: 25 need several "
    "processes (the check that all processes train the same run, the other processes' load, the world "
    "against the batch size (twice), `from_env`'s device, the lost-process words, the dist handed to the loop; "
    "`tests/test_distributed.py`, not in the selection, starts real processes), 9 need CUDA (fork_rng's "
    "devices, autocast by default on cuda, each process's GPU) and 3 restore's fallback for an error without "
    "words (no checkpoint found that makes restore raise one). Bug found: none (derive_seed(s, k, 0) equals "
    "derive_seed(s, k), as SeedSequence ignores trailing zero words; the epochs it is given start at 1).",
    "Wide group (the preconditioned logistic regression of the linear probe's wide-feature path, added later): every "
    "function of `cvae_features/probes/wide_logistic.py` (`LowRankSketch.__init__`, `_Preconditioner.__init__`/"
    "`power`, `PreconditionedLogistic.__init__`, `set_params`, `_logits`, `_loss_grad`, `fit`, `_lbfgs` (with its nested "
    "`objective` and `callback`: mutmut 3 mutates them as part of the enclosing method), `decision_function`, "
    "`predict`) and `resolve_solver` of `cvae_features/probes/linear.py`; wide_logistic.py joined the mutated "
    "modules, tests/test_wide_logistic.py the selection. The runs (`--module wide --max-children 1`, 2026-12-04, "
    "03:46-03:55 UTC) were made with a narrowed `setup.cfg` (only wide_logistic.py and linear.py mutated; "
    "tests/test_wide_logistic.py and tests/test_probes.py selected); the committed one keeps the full lists. First "
    "run: 529 mutants, 476 killed, 53 survived (90.0 %): the tests compared the fit with scikit-learn's optimum at "
    "tight tolerances, which any path reaches, so nothing pinned the path itself (the two precision phases, the "
    "met flag, the iteration budget of the float64 phase, the float32 products, the sketch of the float32 copy), "
    "scipy's call (method, maxls, ftol), ties with tol, the defaults and a few messages. New tests "
    "(`tests/test_wide_logistic.py`): fit written out from its parts (sketch of the float32 copy, curvature at the "
    "start, L-BFGS on float32 products then on float64 with the iterations left) and compared bit for bit, with "
    "n_iter_, for a fit met in float32, one finished in float64 and one capped in float64; a case (features not "
    "exact in float32) where the float32 gradient meets tol and the float64 one not, so the fit must go on; "
    "gradients exactly at tol stop (at the start and at an iteration, float64 and mixed); scipy's minimize called "
    "as scikit-learn's lbfgs calls it (a spy that calls through), without warnings; the float32 products and a "
    "float32 input fitted as its float64 copy, a new precision on the same array; defaults, private names refused, "
    "a score of exactly 0 (scikit-learn's class), float64 scores of a longdouble input; the sketch at rank 1 and "
    "rank d and its randomized-SVD settings on a full-rank matrix. 12 equivalent: einsum labels in upper case (3), "
    "numpy defaults spelt otherwise (replace=None, astype(None), randomized_svd's default n_oversamples), the "
    "kept-sketch markers '' for None, and 5 in the callback's re-evaluation branch, which scipy's L-BFGS-B never "
    "takes (it calls back at the point it last evaluated; counted 0 times). Bug found: none.",
    "Reruns of 2026-12-04 after code of three groups changed (each `--module G` in full on the tests of that day, "
    "then `--report`; the first runs' lists of mutants killed by new tests are kept). Probes group: linear.py's "
    "`_fit_logistic` gained the solver, seed and start arguments (35 mutants; its four equivalents, C given at "
    "construction and reset by set_params, renamed to their new numbers); 500 mutants, 481 killed, 2 timeouts, 17 "
    "equivalent: two mutants of `AnomalyScorer.fit` that had timed out before now finish and survive, equivalent "
    "(covariance_type='full' is GaussianMixture's default; algorithm='brute' is there for speed on wide features, "
    "'auto' picks another exact search). Unlabelled group: `_check_k_range` no longer cuts 2.7 to 2 (the new "
    "`_whole` joined the group): 450 mutants, 440 killed, the same 10 equivalent. Ray group: each task now "
    "carries its own rows of the source (`_task_part`, joined the group; `_ChunkEncoder` takes the preprocessing, "
    "featurizer and batch size only): 590 mutants, 572 killed, 2 timeouts, 16 equivalent (the same kinds as before; "
    "`_task_part`'s 4 all killed by tests/test_ray_engine_units.py). Entry group not rerun: `linear_probe` gained the "
    "solver argument and the refit's start; its 214 mutants, run apart with a narrowed selection, were all killed.",
]


def markdown(rec: dict) -> str:
    lines = ["# Mutation testing of the core (mutmut)", ""] + bc.header_lines(rec) + [""]
    lines += [
        f"Tool: mutmut {rec['mutmut_version']}, configured in `setup.cfg` (`[mutmut]`: the mutated modules, the "
        "test files selected, `raise` lines left alone); run by `benchmarks/mutation.py` with "
        f"{rec['max_children']} worker(s). Each mutant runs the selected tests that call its function, "
        "stopping at the first failure. Only the functions listed per group in `benchmarks/mutation.py` are "
        "counted (commit protocol and readers of the store, extraction planning and resume, probe selection, "
        "draws and scores, the model's loss and prior, joined stores, the Ray engine's logic that runs without "
        "Ray, the unlabelled commands' checks, records and sheets, nearest neighbours and duplicates with their "
        "approximate index, model files and their fingerprints, resolving models, the image cache and keyed "
        "noise, Kingma's M2 on feature vectors, training-time augmentation, the convolutional M2 conv-m2 and its "
        "labels file, the mixture-prior family conv-vade with its prior and the 'prior' cluster method, the "
        "training loop, the probes' entry points with the grouping and outlier ranking of the unlabelled "
        "commands, the featurizers and contact sheets, the process group, model families and auto-training, "
        "the clustering code, extraction's entry point with the shard rule, the registries, training hooks and "
        "run directory, and how a training run is set up). "
        "Survived includes \"no tests\" (no "
        "selected test calls the function); crashed: the test run died (an HDF5 abort on the damaged file the "
        "mutant made), "
        "which fails the suite, so it counts as caught. "
        "Score = (killed + timeout + crashed) / (generated − equivalent − skipped − not run).", ""]
    rows, tot = [], Counter()
    for group, g in rec["groups"].items():
        for path, c in g.get("per_file", {}).items():
            c = Counter(c)  # missing fields (an older record) count 0
            rows.append([f"{group}: `{path}`", c["generated"], c["killed"], c["timeout"], c["crashed"],
                         tally(c)["alive"], c["equivalent"], c["skipped"], c["not_checked"],
                         bc.pct(tally(c)["score"])])
            tot.update({key: c[key] for key in COUNTS})
    score = tally(tot)["score"]
    rows.append(["**all**", tot["generated"], tot["killed"], tot["timeout"], tot["crashed"], tally(tot)["alive"],
                 tot["equivalent"], tot["skipped"], tot["not_checked"], f"**{bc.pct(score)}**"])
    lines += bc.md_table(["module", "generated", "killed", "timeout", "crashed", "survived (not equivalent)", "equivalent",
                          "skipped", "not run", "score %"], rows)
    met = score is not None and score >= TARGET and tot["not_checked"] == 0
    lines += ["", f"Target: at least {TARGET:.0%} of the non-equivalent mutants killed: "
                  f"**{'met' if met else 'not met'}** ({bc.pct(score)} %).", ""]
    wall = ", ".join(f"{g} {v.get('wall_s', 0):.0f} s" for g, v in rec["groups"].items())
    lines += [f"Wall time of the mutmut runs per group (all runs, reruns of survivors included): {wall}.", ""]
    lines += ["## Notes", ""] + [f"- {n}" for n in NOTES] + [""]
    surv = [(g, s) for g, v in rec["groups"].items() for s in v.get("survivors", [])]
    lines += ["## Survivors (not equivalent)", ""]
    if surv:
        lines += bc.md_table(["group", "mutant", "status", "change"],
                             [[g, f"`{s['mutant']}`", s["status"], s["change"]] for g, s in surv])
    else:
        lines += ["None."]
    lines += ["", "## Equivalent mutants", "",
              "Survivors that change nothing observable (reason per mutant; listed in "
              "`benchmarks/mutation_equivalent.json`).", ""]
    eq = [(g, s) for g, v in rec["groups"].items() for s in v.get("equivalents", [])]
    lines += bc.md_table(["group", "mutant", "change", "why equivalent"],
                         [[g, f"`{s['mutant']}`", s["change"], s["reason"]] for g, s in eq]) if eq else ["None."]
    killed_new = [(g, k) for g, v in rec["groups"].items() for k in v.get("killed_by_new_tests", [])]
    lines += ["", "## Survivors of the first run killed by tests added since", ""]
    lines += [f"{len(killed_new)} mutants, killed on rerunning them (`--only survivors`) by the tests in "
              "`tests/test_mutation_survivors.py` (join group: `tests/test_join.py`, ray group: "
              "`tests/test_ray_engine_units.py`, unlabelled group: `tests/test_groups.py`, `tests/test_outliers.py`, "
              "`tests/test_cli_unlabelled.py`, neighbors group: `tests/test_neighbors.py`, `tests/test_index.py`, "
              "files group: `tests/test_model_hostile.py`, `tests/test_families.py`, `tests/test_cache.py`, "
              "`tests/test_noise.py`, semisup group: `tests/test_semisup.py`, augment group: `tests/test_augment.py`, "
              "m2vae group: `tests/test_m2vae.py`, vade group: `tests/test_vade.py`, `tests/test_priors.py`, "
              "loop group: `tests/test_train_seams.py`, featurizers group: `tests/test_featurizers.py`, "
              "`tests/test_sheets.py`, setup group: `tests/test_distributed_units.py`, `tests/test_families.py`, "
              "`tests/test_extract.py`, `tests/test_priors.py`, cluster group: `tests/test_probes.py`, "
              "`tests/test_registry.py`, shards group: `tests/test_shards.py`, `tests/test_ray_engine_units.py`, "
              "entry group: `tests/test_probes.py`, `tests/test_groups.py`, `tests/test_outliers.py`, "
              "seams group: `tests/test_registry.py`, `tests/test_train_seams.py`, `tests/test_model_hostile.py`, "
              "training group: `tests/test_train_setup.py`, "
              "wide group: `tests/test_wide_logistic.py`); "
              "the test written for each "
              "function:", ""] if killed_new else ["None.", ""]
    if killed_new:
        funcs = sorted({k["mutant"].rsplit("__mutmut_", 1)[0] for _, k in killed_new})
        lines += bc.md_table(["function", "tests added"],
                             [[f"`{f}`", ", ".join(f"`{t}`" for t in NEW_TESTS.get(f, NEW_TESTS.get(f.rsplit(".", 1)[1], ["-"])))]
                              for f in funcs])
        lines += ["", "<details><summary>the mutants</summary>", ""]
        lines += bc.md_table(["group", "mutant", "change"], [[g, f"`{k['mutant']}`", k["change"]]
                                                            for g, k in killed_new])
        lines += ["", "</details>", ""]
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--module", action="append", choices=list(GROUPS), help="group(s) to run (default: all)")
    p.add_argument("--only", choices=("all", "unchecked", "survivors"), default="all",
                   help="all mutants (default), those not run yet, or those that survived (or timed out) last time")
    p.add_argument("--report", action="store_true", help="do not run mutmut; rewrite the results from mutants/")
    p.add_argument("--max-children", type=int, default=2, help="parallel mutants (default 2)")
    args = p.parse_args(argv)
    import mutmut

    groups = args.module or list(GROUPS)
    old = json.loads(STEM.with_suffix(".json").read_text()) if STEM.with_suffix(".json").exists() else {}
    rec = bc.record_header("mutation", __file__, argv)
    rec.update(mutmut_version=mutmut.__version__ if hasattr(mutmut, "__version__") else "3",
               max_children=args.max_children, target=TARGET, groups=dict(old.get("groups", {})))
    for group in groups:
        previous = rec["groups"].get(group, {}) if args.only != "all" or args.report else {}
        if not args.report:
            names = patterns(group)
            wanted = {"unchecked": ("not checked",), "survivors": ("survived", "no tests", "timeout")}
            if args.only != "all":  # (equivalent survivors are not rerun: no test can kill them)
                names = [n for n, s in group_mutants(group).items() if s in wanted[args.only] and n not in EQUIVALENT]
            if names:
                bc.say(f"{group}: mutmut run on {len(names)} pattern(s)/mutant(s)")
                wall = run_mutmut(names, args.max_children, bc.WORK / f"mutation-{group}.log")
                previous = dict(previous, wall_s=previous.get("wall_s", 0.0) + wall)
        statuses = group_mutants(group)
        rec["groups"][group] = summarize(group, statuses, previous)
        g = rec["groups"][group]
        bc.say(f"{group}: {g['generated']} generated, {g['killed']} killed, {g['timeout']} timeout, "
               f"{g['survived']} survived, {g['no_tests']} no tests, {g['equivalent']} equivalent, "
               f"score {bc.pct(g['score'])} %")
        rec["wall_s"] = sum(v.get("wall_s", 0.0) for v in rec["groups"].values())
        bc.write_results(STEM, rec, markdown(rec))
    print(STEM.with_suffix(".md"))


if __name__ == "__main__":
    main()
