import { defineConfig } from "vite";
import react from "@vitejs/plugin-react";

// `npm run dev`: the app on Vite's dev server, the API from the backend (`make run`).
const backend = "http://127.0.0.1:8000";

export default defineConfig({
  plugins: [react()],
  server: {
    proxy: {
      "/api": backend,
      "/health": backend,
      "/docs": backend,
      "/openapi.json": backend,
    },
  },
});
