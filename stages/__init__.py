"""Library code of the pipeline: corpus, teachers, extraction, normalizers, students, distillation,
evaluation. Nothing here starts Ray, reads params.yaml or sets global state; `pipeline/` wires it."""
