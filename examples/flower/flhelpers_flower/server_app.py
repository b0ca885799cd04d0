"""The ServerApp: the run config's flhelpers rule as a Flower strategy, central evaluation each round."""

from flhelpers.flower import make_server_app

app = make_server_app()
