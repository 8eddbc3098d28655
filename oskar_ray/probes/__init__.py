"""Reading frozen features: probes, views and representation health, shared by pretraining and evaluation.

``heads.py`` (linear, kNN, attentive probes on cached features), ``views.py``
(which encoder reads which modalities), ``health.py`` (RankMe, feature std),
``online.py`` (the leave-one-out kNN probe that pretraining reports and the
sweep schedulers rank on; it scores with ``heads.knn_scores``, the eval suite's kNN).
"""
