"""Stage one of agglomerative distillation (AM-RADIO, arXiv 2312.06709): the in-process shard worker that
fills a teacher's feature store, plus store inspection and verification. No Ray here (see pipeline/)."""
