"""Scores, baselines and figures: WeatherBench-2/ClimaX metrics, persistence and climatology, plots."""
