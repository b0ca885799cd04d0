"""The ClientApp: client k trains peer k of the flhelpers benchmark (a label flipper if drawn as one)."""

from flhelpers.flower import make_client_app

app = make_client_app()
