"""Orchestration shared by the stages: the Ray session of a run (`ray_session.py`). No stage logic here;
the stages call in, this package never imports a stage."""
