"""fedticket on Flower (``pip install fedticket[flower]``).

* :mod:`~fedticket.flower.server_app` and :mod:`~fedticket.flower.client_app` are thin
  adapters: the ServerApp runs the same stages and :class:`~fedticket.federated.TicketStrategy`
  as ``fedticket run`` with a Flower ``Grid`` as the engine; the ClientApp runs the same
  :class:`~fedticket.federated.LocalTrainer` and codec as the simulator's clients.
* :mod:`~fedticket.flower.deploy` starts, watches and stops a local SuperLink + SuperNodes.
* :mod:`~fedticket.flower.mods` is a sparse-update mod for any Flower app.

Importing this package needs ``flwr``; nothing else in fedticket does.
"""
