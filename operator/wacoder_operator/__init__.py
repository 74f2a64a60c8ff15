"""The WhatsAppBot operator (kopf): blue/green Helm releases of charts/whatsapp-coder."""
