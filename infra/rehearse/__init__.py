"""The deploy rehearsal (`make rehearse`): infra/template.yaml deployed into moto, run with the real binaries."""
