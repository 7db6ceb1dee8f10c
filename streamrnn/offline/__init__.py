"""Offline tools on CSV history: load it, train a model, replay it as the service would, score and plot the results."""
