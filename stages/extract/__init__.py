"""Stage one of agglomerative distillation (AM-RADIO, arXiv 2312.06709): the shard worker that fills a
teacher's feature store (`worker.py`), the driver that runs it over a store (`driver.py`, on the shared shard
runner of stages/orchestrate), the stage over a list of teachers (`stage.py`: leases, one Ray session,
fidelity, receipts), its up-front checks (`preflight.py`), plus store inspection, verification, repair,
transcoding, the student-view store and the text side."""
