"""glmkb's web UI (Gradio): one module per tab (``chat``, ``summary``, ``manage``) doing its
layout, wiring and handlers; ``ui`` assembles the page, ``server`` launches it, ``cli`` is
``glmkb-web``. Everything goes through one shared ``app.services.Services``."""
