"""The pipeline stages, one module each, composed in order by `default_stages`."""

from __future__ import annotations

from nexus_grpc.pipeline.intent import Reconciler
from nexus_grpc.reconcilers.budget import BudgetReconciler
from nexus_grpc.reconcilers.privacy import PrivacyReconciler
from nexus_grpc.reconcilers.quality import QualityReconciler
from nexus_grpc.reconcilers.request_analyzer import RequestAnalyzer
from nexus_grpc.reconcilers.scheduler import SchedulerReconciler
from nexus_grpc.reconcilers.tier import TierReconciler


def default_stages() -> list[Reconciler]:
    return [
        RequestAnalyzer(),
        PrivacyReconciler(),
        BudgetReconciler(),
        TierReconciler(),
        QualityReconciler(),
        SchedulerReconciler(),
    ]


__all__ = [
    "BudgetReconciler",
    "PrivacyReconciler",
    "QualityReconciler",
    "RequestAnalyzer",
    "SchedulerReconciler",
    "TierReconciler",
    "default_stages",
]
