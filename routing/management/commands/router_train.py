"""Train a router for a smart group from the shipped table and the platform's traffic."""

from __future__ import annotations

import argparse
from typing import Any

from django.core.management.base import BaseCommand, CommandError

from routing.ml.features import embedding_backend_names
from routing.ml.models import SmartGroup
from routing.ml.routers import LEARNED_KINDS
from routing.ml.services import router_promote, router_train


class Command(BaseCommand):
    help = "Train (and optionally promote) a router for a smart group; prints its offline evaluation."

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("group", help="The smart group's public name, e.g. auto.")
        parser.add_argument("--kind", choices=LEARNED_KINDS, help="Router kind (default: the group's).")
        parser.add_argument("--backend", default="hashing", choices=embedding_backend_names())
        parser.add_argument("--no-traffic", action="store_true", help="Train on the synthetic table only.")
        parser.add_argument("--no-synthetic", action="store_true", help="Train on the platform's traffic only.")
        parser.add_argument("--promote", action="store_true", help="Make the new router active.")

    def handle(self, *args: Any, **options: Any) -> None:
        group = SmartGroup.objects.filter(name=options["group"]).first()
        if group is None:
            raise CommandError(f"no smart group named {options['group']!r}")
        kind = options["kind"] or (group.router_kind if group.router_kind in LEARNED_KINDS else "knn")
        try:
            artifact = router_train(
                group=group,
                actor="cli:router_train",
                kind=kind,
                backend=options["backend"],
                include_traffic=not options["no_traffic"],
                include_synthetic=not options["no_synthetic"],
            )
        except ValueError as exc:
            raise CommandError(str(exc)) from exc
        metrics = artifact.metrics
        self.stdout.write(
            f"trained {group.name} {artifact.label}: {artifact.trained_rows} rows "
            f"({artifact.traffic_rows} from traffic), sha256 {artifact.sha256[:16]}…, APGR {metrics['apgr']:.3f}"
        )
        self.stdout.write("strong share  quality recovered  cost saved")
        for point in metrics["curve"][::2]:
            self.stdout.write(
                f"{point['target_share']:>11.0%}  {point['quality_recovered']:>17.1%}  {point['cost_saved']:>10.1%}"
            )
        if options["promote"]:
            router_promote(artifact=artifact, actor="cli:router_train")
            self.stdout.write(f"promoted {artifact.label}")
