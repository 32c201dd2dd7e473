"""A minimal Flower app that is not fedticket's pipeline, using fedticket's sparse mod."""
