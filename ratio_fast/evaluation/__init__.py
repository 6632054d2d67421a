"""Evaluation: accuracy, robust accuracy with AutoAttack's definitions (and AutoAttack itself),
OOD detection on built-in and file sets, counterfactuals and the export of trained weights."""
